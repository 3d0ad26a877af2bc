"""A worker's loop reading a connection on after a request (``wire.ReadOn``):
the next request of a caller in a loop runs without a pass through the event
loop, and other work still gets the loop within the budget.

A real server on a ``SpinningLoop`` thread (as a worker's exec loop) and a
client whose replies the test's thread reads itself (as a driver's ``get``).
"""

from __future__ import annotations

import asyncio
import os
import select
import tempfile
import threading
import time

import pytest
from conftest import wait_for
from test_connection import TOKEN, LoopThread

from skate._private import wire

pytestmark = pytest.mark.timeout(60)


class ExecLoop:
    """A ``SpinningLoop`` on its own thread, serving ``handlers`` with a ``ReadOn``."""

    def __init__(self, path: str, handlers: dict, serving: bool = True, budget_s: float = 1.0) -> None:
        self.serves_inline = serving  # (the ReadOn's gate is this object)
        self.loop = wire.SpinningLoop()
        # A wide window: the test's thread needs far longer than a driver to send again.
        self.read_on = wire.ReadOn(self.loop, self, budget_s=budget_s, spin_s=0.05)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.srv = asyncio.run_coroutine_threadsafe(
            wire.serve_unix(path, TOKEN, handlers, read_on=self.read_on), self.loop
        ).result(10)

    def close(self) -> None:
        async def stop():
            self.srv.close()
            await self.srv.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def call(conn: wire.Connection, method: str, body) -> object:
    """A sync request whose reply this thread reads itself."""
    got = threading.Event()
    out: list = []

    def done(value, error):
        out.append((value, error))
        got.set()

    conn.request_cb(method, body, (), done, threadsafe=True)
    conn.lead(got.is_set, time.monotonic() + 10)
    assert got.wait(10), "no reply"
    value, error = out[0]
    assert error is None, error
    return value


class Served:
    """A server (``ExecLoop``) whose handlers note whether they ran while reading
    on (``seen``), and clients of it on a ``LoopThread``; ``served`` closes all."""

    def __init__(self, path: str, serving: bool, budget_s: float) -> None:
        self.path = path
        self.seen: list[bool] = []

        def note(conn, body, bufs):
            self.seen.append(self.ex.read_on.active)
            return body

        def busy(conn, body, bufs):  # 300 us of I/O-like work (off the GIL, so the caller keeps sending)
            select.select([], [], [], 0.0003)
            return note(conn, body, bufs)

        self.ex = ExecLoop(path, {"note": note, "busy": busy}, serving, budget_s)
        self.client = LoopThread()
        self.conns: list[wire.Connection] = []

    def connect(self) -> wire.Connection:
        conn = self.client.run(wire.connect(self.path, TOKEN))
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            self.client.loop.call_soon_threadsafe(c.close)
        self.client.close()
        self.ex.close()


@pytest.fixture
def served():
    """``served(serving=True, budget_s=1.0)`` -> a ``Served`` (closed after the test)."""
    d = tempfile.mkdtemp(prefix="skt")
    made: list[Served] = []

    def make(serving: bool = True, budget_s: float = 1.0) -> Served:
        made.append(Served(os.path.join(d, "x.sock"), serving, budget_s))
        return made[-1]

    yield make
    for sv in made:
        sv.close()
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def test_a_request_that_follows_quickly_is_read_on_where_the_last_one_ran(served):
    sv = served()
    conn = sv.connect()
    for i in range(50):
        assert call(conn, "note", i) == i
    # Each request right behind the last one was read on, not taken by the loop.
    assert sum(sv.seen) >= 40, sv.seen


def test_no_reading_on_where_requests_are_handed_on(served):
    sv = served(serving=False)
    conn = sv.connect()
    for i in range(20):
        call(conn, "note", i)
    assert sv.seen == [False] * 20


def test_other_work_gets_the_loop_while_a_caller_keeps_calling(served):
    sv = served(budget_s=30.0)  # only yielding can serve the others in time
    seen = sv.seen
    a, b = sv.connect(), sv.connect()
    stop = threading.Event()

    def keep_calling():
        while not stop.is_set():
            call(a, "note", 0)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        wait_for(lambda: sum(seen) > 10, timeout=10, what="the caller read on")
        # A callback posted to the loop and another connection's request both
        # run while the first caller goes on (reading on yields to them).
        ran = threading.Event()
        t0 = time.monotonic()
        sv.ex.loop.call_soon_threadsafe(ran.set)
        assert ran.wait(5)
        assert call(b, "note", "b") == "b"
        assert time.monotonic() - t0 < 3
        assert caller.is_alive()
    finally:
        stop.set()
        caller.join(10)


def test_a_caller_that_keeps_requests_queued_still_lets_timers_run(served):
    sv = served(budget_s=0.05)
    conn = sv.connect()
    stop = threading.Event()
    answered = [0]

    def again(value, error):  # on the client's loop: one more request for each reply
        answered[0] += 1
        if not stop.is_set() and error is None:
            conn.request_cb("busy", 0, (), again)

    def start():
        for _ in range(8):  # eight requests in flight at all times
            conn.request_cb("busy", 0, (), again)

    sv.client.loop.call_soon_threadsafe(start)
    try:
        wait_for(lambda: sum(sv.seen) > 50, timeout=10, what="the caller read on")
        fired = threading.Event()
        t0 = time.monotonic()
        sv.ex.loop.call_soon_threadsafe(sv.ex.loop.call_later, 0.01, fired.set)
        assert fired.wait(5), "a timer waited for the caller to stop"
        assert time.monotonic() - t0 < 2
        assert not stop.is_set() and answered[0] > 0
    finally:
        stop.set()
        wait_for(lambda: not conn.pending, timeout=10, what="the last replies")
