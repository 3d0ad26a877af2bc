"""Errors of tasks whose result nobody read, as printed in the background.

The core worker prints such an error when the last ref to the failed
result goes away, and records it here; ``error_info()`` (a name from early
Ray releases) returns them.
"""

from __future__ import annotations

import collections
import threading
import time

_MAX = 1000
_errors: collections.deque = collections.deque(maxlen=_MAX)
_lock = threading.Lock()


def record(err: BaseException) -> None:
    """Remembers an unhandled task error (the last 1000 are kept)."""
    with _lock:
        _errors.append((time.time(), err))


def entries() -> list[dict]:
    """The recorded errors, oldest first: ``{"type", "message", "error", "timestamp"}``."""
    with _lock:
        items = list(_errors)
    return [
        {"type": "task", "message": str(err), "error": err, "timestamp": ts}
        for ts, err in items
    ]


def clear() -> None:
    """Forgets the recorded errors (at shutdown)."""
    with _lock:
        _errors.clear()
