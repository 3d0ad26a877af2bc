"""A worker's loop reading a connection on after a request (``wire.ReadOn``):
the next request of a caller in a loop runs without a pass through the event
loop, and other work still gets the loop within the budget.

A real server on a ``SpinningLoop`` thread (as a worker's exec loop) and a
client whose replies the test's thread reads itself (as a driver's ``get``).
"""

from __future__ import annotations

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
        self.serving = serving
        self.loop = wire.SpinningLoop()
        # A wide window: the test's thread needs far longer than a driver to send again.
        self.read_on = wire.ReadOn(self.loop, lambda: self.serving, budget_s=budget_s, spin_s=0.05)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        import asyncio

        self.srv = asyncio.run_coroutine_threadsafe(
            wire.serve_unix(path, TOKEN, handlers, read_on=self.read_on), self.loop
        ).result(10)

    def close(self) -> None:
        import asyncio

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


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="skt")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def _served(path: str, serving: bool = True, budget_s: float = 1.0):
    seen: list[bool] = []
    ex: ExecLoop | None = None

    def note(conn, body, bufs):
        seen.append(ex.read_on.active)
        return body

    def busy(conn, body, bufs):  # 300 us of I/O-like work (off the GIL, so the caller keeps sending)
        select.select([], [], [], 0.0003)
        return note(conn, body, bufs)

    ex = ExecLoop(path, {"note": note, "busy": busy}, serving, budget_s)
    return ex, seen


def test_a_request_that_follows_quickly_is_read_on_where_the_last_one_ran(sock_dir):
    path = os.path.join(sock_dir, "x.sock")
    ex, seen = _served(path)
    client = LoopThread()
    conn = client.run(wire.connect(path, TOKEN))
    try:
        for i in range(50):
            assert call(conn, "note", i) == i
        # Each request right behind the last one was read on, not taken by the loop.
        assert sum(seen) >= 40, seen
    finally:
        client.loop.call_soon_threadsafe(conn.close)
        client.close()
        ex.close()


def test_no_reading_on_where_requests_are_handed_on(sock_dir):
    path = os.path.join(sock_dir, "x.sock")
    ex, seen = _served(path, serving=False)
    client = LoopThread()
    conn = client.run(wire.connect(path, TOKEN))
    try:
        for i in range(20):
            call(conn, "note", i)
        assert seen == [False] * 20
    finally:
        client.loop.call_soon_threadsafe(conn.close)
        client.close()
        ex.close()


def test_other_work_gets_the_loop_while_a_caller_keeps_calling(sock_dir):
    path = os.path.join(sock_dir, "x.sock")
    ex, seen = _served(path, budget_s=30.0)  # only yielding can serve the others in time
    client = LoopThread()
    a = client.run(wire.connect(path, TOKEN))
    b = client.run(wire.connect(path, TOKEN))
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
        ex.loop.call_soon_threadsafe(ran.set)
        assert ran.wait(5)
        assert call(b, "note", "b") == "b"
        assert time.monotonic() - t0 < 3
        assert caller.is_alive()
    finally:
        stop.set()
        caller.join(10)
        for c in (a, b):
            client.loop.call_soon_threadsafe(c.close)
        client.close()
        ex.close()



def test_a_caller_that_keeps_requests_queued_still_lets_timers_run(sock_dir):
    path = os.path.join(sock_dir, "x.sock")
    ex, seen = _served(path, budget_s=0.05)
    client = LoopThread()
    conn = client.run(wire.connect(path, TOKEN))
    stop = threading.Event()
    answered = [0]

    def again(value, error):  # on the client's loop: one more request for each reply
        answered[0] += 1
        if not stop.is_set() and error is None:
            conn.request_cb("busy", 0, (), again)

    def start():
        for _ in range(8):  # eight requests in flight at all times
            conn.request_cb("busy", 0, (), again)

    client.loop.call_soon_threadsafe(start)
    try:
        wait_for(lambda: sum(seen) > 50, timeout=10, what="the caller read on")
        fired = threading.Event()
        t0 = time.monotonic()
        ex.loop.call_soon_threadsafe(ex.loop.call_later, 0.01, fired.set)
        assert fired.wait(5), "a timer waited for the caller to stop"
        assert time.monotonic() - t0 < 2
        assert not stop.is_set() and answered[0] > 0
    finally:
        stop.set()
        wait_for(lambda: not conn.pending, timeout=10, what="the last replies")
        client.loop.call_soon_threadsafe(conn.close)
        client.close()
        ex.close()
