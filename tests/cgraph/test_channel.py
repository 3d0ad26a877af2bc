"""Channel framing, shared-memory slots, errors and timeouts, over socketpairs in one process."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from skate._private.cgraph import channel as ch
from skate._private.config import CONFIG


def soon(seconds: float) -> float:
    """A deadline (reads and writes take ``time.monotonic`` deadlines)."""
    return time.monotonic() + seconds


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def segment():
    name = f"{CONFIG.shm_prefix}-cgtest-{os.getpid()}"
    ch.shm_create(name, 4 * 1024 * 1024)
    yield name
    ch.shm_unlink(name)


def test_values_of_many_shapes_round_trip_inline(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    r = ch.Reader(b, None, 1024, copy=True)
    w.pump = ch.Inbound([r])  # large values: the reader end drains while the write waits
    values = [None, 1, "hello", b"x" * 70_000, {"k": [1, 2.5]}, np.arange(10), np.ones(300_000)]
    for v in values:
        w.write(v)
        got = r.read(None)
        if isinstance(v, np.ndarray):
            assert np.array_equal(got, v)
        else:
            assert got == v


def test_many_frames_buffered_then_read_in_order(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    r = ch.Reader(b, None, 1024, copy=True)
    for i in range(200):
        w.write(i)
    assert [r.read(None) for _ in range(200)] == list(range(200))


def test_large_values_use_the_slot_and_readers_get_read_only_views(pair, segment):
    a, b = pair
    w = ch.Writer([a], [True], ch.shm_map(segment, True), 1024 * 1024, 4)
    r = ch.Reader(b, ch.shm_map(segment, False), 1024 * 1024, copy=False)
    arr = np.arange(100_000, dtype=np.int64)
    w.write(arr)
    got = r.read(None)
    assert np.array_equal(got, arr) and not got.flags.writeable
    assert w.next_slot == 1  # one slot used
    w.write(np.zeros(10))  # small: inline, no slot
    assert w.next_slot == 1
    assert np.array_equal(r.read(None), np.zeros(10))
    big = np.ones(2 * 1024 * 1024 // 8)  # larger than a slot: through the socket
    t = threading.Thread(target=w.write, args=(big,))
    t.start()
    assert np.array_equal(r.read(soon(5)), big)
    t.join()
    del got
    w.close()
    r.close()


def test_error_values_travel_as_errors(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    r = ch.Reader(b, None, 1024, copy=True)
    w.write(ch.ErrorValue(KeyError("boom")))
    got = r.read(None)
    assert type(got) is ch.ErrorValue and isinstance(got.error, KeyError)


def test_a_value_the_reader_cannot_rebuild_fails_alone(pair):
    a, b = pair
    r = ch.Reader(b, None, 1024, copy=True)
    body = b"\x00\x00\x00\x00" + (5).to_bytes(8, "little") + b"junk!"
    a.send(ch.HDR.pack(ch.VAL, len(body)) + body)
    a.send(ch.HDR.pack(ch.VAL, len(body)) + body)
    got = r.read(None)
    assert type(got) is ch.ErrorValue
    ch.Writer([a], [False], None, 1024, 4).write("next")
    assert type(r.read(None)) is ch.ErrorValue
    assert r.read(None) == "next"


def test_read_timeout_loses_nothing(pair):
    a, b = pair
    r = ch.Reader(b, None, 1024, copy=True)
    with pytest.raises(ch.ChannelTimeout):
        r.read(soon(0))
    w = ch.Writer([a], [False], None, 1024, 4)
    w.write("whole")
    assert r.read(None) == "whole"
    # A frame cut in two: reading times out on the missing half, then gets the value.
    other = socket.socketpair()
    try:
        ch.Writer([other[0]], [False], None, 1024, 4).write("cut in two")
        frame = other[1].recv(1024)
    finally:
        other[0].close()
        other[1].close()
    a.send(frame[:5])
    with pytest.raises(ch.ChannelTimeout):
        r.read(soon(0.01))
    a.send(frame[5:])
    assert r.read(soon(1)) == "cut in two"


def test_end_of_stream_is_channel_closed(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    r = ch.Reader(b, None, 1024, copy=True)
    w.write(1)
    a.close()
    assert r.read(None) == 1
    with pytest.raises(ch.ChannelClosed):
        r.read(None)


def test_writing_to_a_gone_reader_is_channel_closed(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    b.close()
    with pytest.raises(ch.ChannelClosed):
        for _ in range(3):
            w.write("x" * 100)


def test_send_timeout_says_whether_a_frame_was_cut(pair):
    a, b = pair
    w = ch.Writer([a], [False], None, 1024, 4)
    with pytest.raises(ch.ChannelTimeout) as info:
        w.write(b"x" * (16 * 1024 * 1024), soon(0.05))
    assert info.value.partial


def _exchange(big: bytes, deadline_s: float) -> dict:
    """Two ends write ``big`` to each other over one socket pair, then each reads the other's.

    Each end is a process's channels in miniature: its writer's pump is its
    own inbound channel (the same socket, so the writer waits for room *and*
    for data on one descriptor), and after writing it reads, as every
    process does next.  Returns what each end got (or the error it met).
    """
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    got: dict = {}
    try:
        ends = {}
        for name, s in (("a", a), ("b", b)):
            w, r = ch.Writer([s], [False], None, 1024, 4), ch.Reader(s, None, 1024, copy=True)
            w.pump = ch.Inbound([r])
            ends[name] = (w, r)

        def side(name: str) -> None:
            w, r = ends[name]
            try:
                w.write(big, soon(deadline_s))
                got[name] = r.read(soon(deadline_s))
            except Exception as e:  # noqa: BLE001 - reported to the test
                got[name] = e

        t = threading.Thread(target=side, args=("b",))
        t.start()
        side("a")
        t.join(2 * deadline_s + 5)
        assert not t.is_alive()
    finally:
        a.close()
        b.close()
    return got


def test_a_blocked_writer_keeps_draining_its_inbound_channel():
    # Two ends each write a large value to the other: without the pump both
    # would block forever on full sockets.  A writer whose socket is also its
    # inbound channel must wait for room as well as for data: once the other
    # end has sent everything, only room can wake it.
    big = b"y" * (8 * 1024 * 1024)
    for _ in range(3):
        got = _exchange(big, 20)
        assert got == {"a": big, "b": big}


def test_a_blocked_reader_keeps_draining_its_other_inbound_channels():
    # A process waits for a value on one channel while the writer of another
    # channel is blocked on it, and only after that write does it send the
    # awaited value (a graph where an actor reads its inputs in another order
    # than its upstream writes them).
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    for s in (a1, b1, a2, b2):
        s.setblocking(False)
    try:
        r1, r2 = ch.Reader(b1, None, 1024, copy=True), ch.Reader(b2, None, 1024, copy=True)
        inbound = ch.Inbound([r1, r2])
        r1.pump = r2.pump = inbound
        w1, w2 = ch.Writer([a1], [False], None, 1024, 4), ch.Writer([a2], [False], None, 1024, 4)
        big = b"z" * (8 * 1024 * 1024)
        errors: list = []

        def upstream() -> None:
            try:
                w2.write(big, soon(20))  # blocks until the reader drains it
                w1.write("after", soon(20))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=upstream)
        t.start()
        assert r1.read(soon(20)) == "after"
        t.join(20)
        assert not t.is_alive() and not errors
        assert r2.read(soon(5)) == big
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_a_wait_does_not_spin_on_a_closed_inbound_channel(pair):
    # The writer of an inbound channel went away: its end of stream is kept
    # for its own read, and a wait on another channel sleeps (it does not
    # wake at once, again and again, for that end of stream).
    a, b = pair
    c, d = socket.socketpair()
    d.setblocking(False)
    try:
        gone, waiting = ch.Reader(b, None, 1024, copy=True), ch.Reader(d, None, 1024, copy=True)
        inbound = ch.Inbound([gone, waiting])
        waiting.pump = inbound
        a.close()
        start = time.process_time()
        with pytest.raises(ch.ChannelTimeout):
            waiting.read(soon(0.5))
        assert time.process_time() - start < 0.25  # slept, did not spin
        with pytest.raises(ch.ChannelClosed):
            gone.read(soon(1))
    finally:
        c.close()
        d.close()
