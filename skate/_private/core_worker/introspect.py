"""What a core worker tells the state commands about itself: its refs and its threads' stacks.

Both are answered on the I/O thread, so they work while the main thread
runs user code (``skate stack`` shows where it is).  ``install`` adds the
handlers to a ``CoreWorker``'s table.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any

from skate._private.core_worker.memory_store import ERROR, INLINE, PENDING, SHM

_STATES = {PENDING: "PENDING", INLINE: "INLINE", SHM: "SHM", ERROR: "ERROR"}


def list_refs(core: Any) -> list[dict]:
    """The objects this process owns and the borrowed refs it holds (``state_messages.RefInfo``)."""
    out = []
    store = core.store
    with store.lock:
        owned = list(store.entries.items())
        borrowed = [(oid, count, owner) for oid, (count, owner) in store.borrowed.items()]
    for oid, e in owned:
        size = e.size or (len(e.data) if e.data is not None else 0)
        out.append({"object_id": oid, "owned": True, "size": int(size), "state": _STATES.get(e.state, "?"),
                    "local": e.local, "borrowers": e.borrowers, "pending_task": e.task is not None})
    for oid, count, owner in borrowed:
        out.append({"object_id": oid, "owned": False, "size": 0, "state": "BORROWED", "local": count,
                    "borrowers": 0, "pending_task": False, "owner": owner})
    return out


def dump_stack() -> str:
    """Every thread's current Python stack, most recent call last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == me and ident != threading.main_thread().ident:
            continue  # this thread is only answering the request (the main thread always shows)
        parts.append(f"Thread {names.get(ident, ident)!r} (ident {ident}):\n"
                     + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def install(core: Any) -> None:
    """Adds ``list_refs`` and ``dump_stack`` to ``core``'s request handlers."""
    core.handlers["list_refs"] = lambda conn, body, bufs: list_refs(core)
    core.handlers["dump_stack"] = lambda conn, body, bufs: dump_stack()
