"""``cancel``: queued and running tasks, actor tasks, and the tasks they submitted.

With ``recursive=True`` (Ray's default) cancelling a task also cancels the
tasks it submitted that are still pending or running.  A worker remembers,
per running task, the first return id of each task it submitted (ids only,
so no value is kept alive); when a cancel for that task arrives on its
control endpoint it cancels those children the same way, and their own
workers carry the cancel down the tree.  Each thread keeps the list of the
task it runs now; a thread starting another task drops the previous list.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from skate import exceptions as exc

_children: dict[bytes, list[bytes]] = {}
_local = threading.local()
_PRUNE_AT = 1024


def note_child(core: Any, parent: bytes, oid: bytes) -> None:
    """Records that ``parent``, the task running on this thread (its caller read
    it from the thread's context), submitted the task returning ``oid``."""
    lst = _children.get(parent)
    if lst is None:
        prev = getattr(_local, "parent", None)
        if prev is not None:
            _children.pop(prev, None)
        _local.parent = parent
        lst = _children[parent] = []
    lst.append(oid)
    if len(lst) >= _PRUNE_AT and len(lst) % _PRUNE_AT == 0:
        store = core.store
        lst[:] = [o for o in lst if (e := store.get(o)) is not None and e.task is not None]


def cancel_task(core: Any, rec: Any, force: bool, recursive: bool) -> None:
    """Cancels the task of ``rec`` (I/O thread): a normal task or an actor task."""
    if rec.actor is None:
        core.submitter.cancel(rec, force, recursive)
        return
    st = rec.actor
    if rec in st.queue:
        st.queue.remove(rec)
        core.submitter.fail(rec, exc.TaskCancelledError(rec.spec["t"].hex()))
    elif st.info.get("address") and rec.spec["t"] in st.inflight:
        body = {"t": rec.spec["t"], "force": False, "r": recursive}
        asyncio.ensure_future(_notify(core, st.info["address"], "cancel_task", body))


async def _notify(core: Any, address: list, method: str, body: Any) -> None:
    """A one-way message to a worker's control endpoint (not queued behind its work)."""
    try:
        conn = await core.conn_to(address)
        conn.notify(method, body)
    except Exception:  # noqa: BLE001 - the worker is gone: nothing left to cancel
        pass


def cancel_children(core: Any, parent: bytes) -> int:
    """Cancels the pending or running tasks submitted by task ``parent`` (I/O thread).

    Returns:
        How many cancels were sent.
    """
    n = 0
    for oid in _children.pop(parent, ()):
        e = core.store.get(oid)
        rec = e.task if e is not None else None
        if rec is not None:
            cancel_task(core, rec, False, True)
            n += 1
    return n
