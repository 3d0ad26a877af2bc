"""A connection's table of pending requests is shared: user threads add to it
while the loop reads and fails it.  What the loop does with it must hold when
the table changes under it."""

from __future__ import annotations

import asyncio

import pytest

from skate._private.wire import dispatch
from skate._private.wire.dispatch import Pending
from skate._private.wire.watch import Watch

pytestmark = pytest.mark.timeout(30)


def test_failing_a_table_fails_a_request_added_while_it_is_failed():
    """A request that a sending thread adds to the table of a connection that is
    closing, while the table is being failed, fails too (it waited forever)."""
    failed = []
    pending: dict = {}

    def late(result, error):
        failed.append(("late", error))

    def first(result, error):
        failed.append(("first", error))
        pending[2] = Pending(late, None, True)  # another thread's request lands now

    pending[1] = Pending(first, None, True)
    lost = ConnectionError("gone")
    dispatch.fail_all(pending, lost)
    assert failed == [("first", lost), ("late", lost)] and not pending


class _Table(dict):
    """A table whose iteration meets another thread's change, as ``next(iter(d))``
    does when a request is added between the two steps."""

    def __iter__(self):
        raise RuntimeError("dictionary changed size during iteration")


class _Conn:
    closed = loop_reading = False
    leader = None
    owed_mark = 0
    off_since = 0.0

    def __init__(self) -> None:
        self.pending = _Table({7: None})
        self.watched = 0

    def watch(self) -> None:
        self.watched += 1


def test_a_watch_tick_that_meets_a_changing_table_looks_again_next_tick():
    """Before, the tick raised out of its timer and was never scheduled again: a
    reply that no thread read was then never read at all."""
    loop = asyncio.new_event_loop()
    try:
        w = Watch(loop)
        conn = _Conn()
        w.add(conn)
        w._tick()  # (the timer's callback, run at once)
        assert w.timer is not None and conn in w.conns  # still watched, ticking on
        conn.pending = {7: None}
        conn.owed_mark = 7  # owed since the last tick: the loop reads it again
        w._tick()
        assert conn.watched == 1 and conn not in w.conns
    finally:
        if w.timer is not None:
            w.timer.cancel()
        loop.close()
