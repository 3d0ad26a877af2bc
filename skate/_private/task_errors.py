"""Turning an exception raised by user code in a worker into the error its caller gets.

The caller gets a ``RayTaskError`` carrying:

- the remote traceback, with skate's own frames (the executor, the API and
  core modules the call went through) left out, so it starts at the user's
  function; file names and source lines are the user's own (see
  ``skate._private.source``);
- where it ran: the task or ``Class.method`` name, the worker's pid and its
  node's address, and for an actor call the actor's id and class;
- the original exception as ``cause`` when it survives a pickle round trip
  (checked here, so an exception whose class takes other constructor
  arguments than its ``args`` does not fail in the caller); otherwise only
  its class, for the dual-typed ``RayTaskError(Cls)``, or nothing.
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import serialization

_SKATE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_SKATE_USER_DIRS = (os.path.join(_SKATE_DIR, "examples") + os.sep,)


def is_internal_frame(filename: str) -> bool:
    """True for a frame of skate's own code (not of its bundled examples)."""
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    return path.startswith(_SKATE_DIR) and not path.startswith(_SKATE_USER_DIRS)


def _strip(te: traceback.TracebackException, seen: set) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = [f for f in te.stack if not is_internal_frame(f.filename)]
    te.stack = traceback.StackSummary.from_list(frames)
    for nxt in (te.__cause__, te.__context__):
        if nxt is not None:
            _strip(nxt, seen)


def user_traceback(e: BaseException) -> str:
    """The traceback of ``e`` as text, without skate's frames."""
    te = traceback.TracebackException(type(e), e, e.__traceback__, compact=True)
    _strip(te, set())
    return "".join(te.format())


def _round_trips(obj: Any) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(obj))
        return True
    except Exception:  # noqa: BLE001 - whatever fails, the caller could not rebuild it
        return False


def task_error(e: BaseException, name: str, core: Any, actor_class: str = "", actor_id: bytes | None = None) -> exc.RayTaskError:
    """The ``RayTaskError`` for exception ``e`` raised by task (or ``Class.method``) ``name``."""
    cause: BaseException | None = e.cause if isinstance(e, exc.RayTaskError) and e.cause is not None else e
    if isinstance(cause, serialization.SerializationError):
        cause = TypeError(str(cause))
    cause_cls: type | None = type(cause)
    if isinstance(e, exc.RayTaskError) and e.cause is None:
        cause_cls = getattr(e, "_cause_cls", None)
    if not _round_trips(cause):
        cause = None
        if cause_cls is not None and not _round_trips(cause_cls):
            cause_cls = None
    err = exc.RayTaskError(
        name,
        user_traceback(e),
        cause,
        pid=os.getpid(),
        ip=getattr(core, "node_ip", None),
        actor_repr=f"{actor_class}" if actor_id else None,
        actor_id=actor_id.hex() if actor_id else None,
    )
    err._cause_cls = cause_cls
    return err
