"""Who reads a client connection: the I/O loop, or a user thread waiting for a
reply (``Connection.lead``), and how reading goes back to the loop.

A real server and client on a Unix socket, the loop on its own thread (as in
a core worker), the waiting done from the test's thread.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import tempfile
import threading
import time

import pytest
from conftest import wait_for

from skate._private import daemon, wire

TOKEN = b"0123456789abcdef" * 2


class LoopThread:
    """An event loop running on a thread of its own, like a core worker's."""

    def __init__(self) -> None:
        self.loop = daemon.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def pair():
    """(loop thread, client connection, server-side state) over a Unix socket."""
    d = tempfile.mkdtemp(prefix="skt")
    path = os.path.join(d, "s.sock")
    lt = LoopThread()
    held: dict = {}

    def slow(conn, body, bufs):
        held[body] = (conn, conn.current_rid)  # answered by the test
        return wire.DEFER

    handlers = {"echo": lambda c, b, bufs: b, "slow": slow}
    srv = lt.run(wire.serve_unix(path, TOKEN, handlers))
    conn = lt.run(wire.connect(path, TOKEN))
    yield lt, conn, held
    lt.loop.call_soon_threadsafe(conn.close)
    for c, _ in held.values():
        lt.loop.call_soon_threadsafe(c.close)

    async def stop():
        srv.close()
        await srv.wait_closed()

    lt.run(stop())
    lt.close()
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(d)


class Result:
    def __init__(self) -> None:
        self.value = None
        self.thread = None
        self.got = threading.Event()

    def __call__(self, value, error) -> None:
        self.value = (value, error)
        self.thread = threading.get_ident()
        self.got.set()


def _sync_call(conn, body):
    r = Result()
    conn.request_cb("echo", body, (), r, threadsafe=True)
    conn.lead(r.got.is_set, time.monotonic() + 10)
    assert r.got.wait(10)
    assert r.value == (body, None)
    return r


def test_waiting_thread_reads_the_reply_itself(pair):
    lt, conn, _ = pair
    # The loop reads too until it first finds a thread reading; then the
    # callbacks run in the waiting thread, not handed over by the loop.
    wait_for(lambda: _sync_call(conn, 1).thread == threading.get_ident(), 10, what="a reply read by this thread")
    # Having met a thread reading it, the loop stops watching the connection.
    wait_for(lambda: _sync_call(conn, 2) and not conn.loop_reading, 10, what="the loop to step back")
    assert all(_sync_call(conn, i).thread == threading.get_ident() for i in range(20))


def test_loop_only_callbacks_are_handed_to_the_loop(pair):
    lt, conn, _ = pair
    wait_for(lambda: _sync_call(conn, 1) and not conn.loop_reading, 10, what="the loop to step back")
    # Now a callback that must run on the loop, while this thread reads.
    plain = Result()
    ts = Result()
    conn.request_cb("echo", "loop", (), plain)
    conn.request_cb("echo", "here", (), ts, threadsafe=True)
    conn.lead(lambda: ts.got.is_set() and plain.got.is_set(), time.monotonic() + 10)
    assert plain.got.wait(10)
    assert plain.value == ("loop", None)
    assert plain.thread == lt.thread.ident
    assert ts.value == ("here", None)


def test_a_reply_nobody_waits_for_is_read_by_the_loop(pair):
    lt, conn, _ = pair
    wait_for(lambda: _sync_call(conn, 1) and not conn.loop_reading, 10, what="the loop to step back")
    # A request whose reply no thread leads for: the loop's watch picks it up.
    later = Result()
    conn.request_cb("echo", 2, (), later, threadsafe=True)
    assert later.got.wait(5), "an unattended reply was never read"
    assert later.value == (2, None)
    assert later.thread == lt.thread.ident


def test_lead_returns_at_the_deadline_and_the_reply_still_arrives(pair):
    lt, conn, held = pair
    r = Result()
    conn.request_cb("slow", "k", (), r, threadsafe=True)
    t0 = time.monotonic()
    conn.lead(r.got.is_set, t0 + 0.2)
    assert 0.15 <= time.monotonic() - t0 < 5
    assert not r.got.is_set()
    wait_for(lambda: "k" in held, 5, what="the server to get the request")
    server_conn, rid = held["k"]
    server_conn.reply(rid, "late")
    assert r.got.wait(5)
    assert r.value == ("late", None)


def test_a_second_thread_waits_while_the_first_reads(pair):
    lt, conn, held = pair
    first, second = Result(), Result()
    conn.request_cb("slow", "a", (), first, threadsafe=True)
    conn.request_cb("slow", "b", (), second, threadsafe=True)
    leader = threading.Thread(target=conn.lead, args=(first.got.is_set, time.monotonic() + 10))
    leader.start()
    wait_for(lambda: conn.leader is not None, 5, what="a thread to lead")
    # This thread cannot lead as well; it returns to wait the ordinary way.
    t0 = time.monotonic()
    conn.lead(second.got.is_set, time.monotonic() + 10)
    assert time.monotonic() - t0 < 1
    wait_for(lambda: "a" in held and "b" in held, 5, what="both requests")
    held["a"][0].reply(held["a"][1], 1)
    leader.join(10)
    assert first.value == (1, None)
    # The leader stopped with a reply still owed: the loop reads it.
    held["b"][0].reply(held["b"][1], 2)
    assert second.got.wait(5)
    assert second.value == (2, None)


def test_peer_closing_while_a_thread_reads(pair):
    lt, conn, held = pair
    r = Result()
    conn.request_cb("slow", "z", (), r, threadsafe=True)
    wait_for(lambda: "z" in held, 5, what="the server to get the request")
    threading.Timer(0.1, lambda: lt.loop.call_soon_threadsafe(held["z"][0].close)).start()
    conn.lead(r.got.is_set, time.monotonic() + 10)
    assert r.got.wait(5)
    value, error = r.value
    assert isinstance(error, wire.ConnectionLost)
    wait_for(lambda: conn.closed and conn.rsock.fileno() < 0, 5, what="the socket to be closed")


# --- the spinning selector of execution loops ---------------------------------------


def test_spinning_selector_catches_a_quick_message_and_sleeps_when_idle():
    import socket

    a, b = socket.socketpair()
    sel = wire.SpinningSelector()
    try:
        sel.register(b, selectors.EVENT_READ)
        # Idle: it sleeps for the timeout rather than polling.
        cpu0, t0 = time.process_time(), time.monotonic()
        assert sel.select(0.3) == []
        assert time.monotonic() - t0 >= 0.25
        assert time.process_time() - cpu0 < 0.15
        # A message wakes it; right after, it polls a while before sleeping.
        a.send(b"x")
        assert [key.fileobj for key, _ in sel.select(5)] == [b]
        b.recv(1)
        threading.Timer(0.00002, a.send, args=(b"y",)).start()
        assert [key.fileobj for key, _ in sel.select(5)] == [b]
        b.recv(1)
        # With nothing coming, the poll ends and it sleeps again.
        t0 = time.monotonic()
        assert sel.select(0.2) == []
        assert time.monotonic() - t0 >= 0.15
    finally:
        sel.close()
        a.close()
        b.close()
