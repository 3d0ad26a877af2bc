"""Per event loop: connections the loop stopped reading because a user thread read them.

A thread blocked on a reply may read its connection itself
(``Connection.lead``); the loop then stops watching that socket, which
would otherwise wake it for nothing.  Every few milliseconds this makes the
loop read again a connection that owes replies nobody is reading for
(results nobody asked for yet; those awaited on the loop are watched for at
once), and, after a quiet spell, any connection at all (so that a closed
peer is noticed).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class Watch:
    """The connections one loop stepped back from."""

    TICK_S = 0.01
    QUIET_S = 0.5

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: set[Any] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, conn: Any) -> None:
        """Starts keeping an eye on ``conn`` (loop thread)."""
        self.conns.add(conn)
        if self.timer is None:
            self.timer = self.loop.call_later(self.TICK_S, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.closed or conn.loop_reading:
                self.conns.discard(conn)
                continue
            if conn.leader is not None:
                conn.off_since = now
                continue
            owed = conn.pending
            # A reply owed since the last tick, that no thread is reading for
            # (a thread between sending and reading is not lost: it is waited for).
            try:
                oldest = next(iter(owed), 0) if owed else 0
            except RuntimeError:  # a user thread sent or read a request just now: look next tick
                continue
            if (oldest and oldest == conn.owed_mark) or (not owed and now - conn.off_since > self.QUIET_S):
                self.conns.discard(conn)
                conn.watch()
            else:
                conn.owed_mark = oldest
        if self.conns:
            self.timer = self.loop.call_later(self.TICK_S, self._tick)


_WATCHES: dict = {}


def watch_of(loop: asyncio.AbstractEventLoop) -> Watch:
    """The ``Watch`` of ``loop`` (made on first use)."""
    w = _WATCHES.get(id(loop))
    if w is None or w.loop is not loop:
        for key, other in list(_WATCHES.items()):
            if other.loop.is_closed():
                del _WATCHES[key]
        w = _WATCHES[id(loop)] = Watch(loop)
    return w
