"""Fuzzing every daemon's frame and header decoder (hypothesis).

Each example authenticates for real (so the bytes reach the decoders behind
the handshake, and behind the encrypted records on TCP), then sends what
hypothesis made: random bytes, frames with random headers, or well-framed
messages with random bodies for skate's own methods.  A probe request
follows on the same connection.  The daemon must either drop that
connection or answer the probe, and must go on serving everyone else: the
cluster still runs tasks and actor calls afterwards.
"""

from __future__ import annotations

import socket

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skate
from skate._private import messages, runtime, wire
from skate._private.wire import framing, handshake
from skate._private.wire.framing import FrameReader, ProtocolError
from skate._private.wire.records import RecordCipher

#: Valid requests that would stop the daemon on purpose (not a decoding fault).
DESTRUCTIVE = {"exit_now", "shutdown", "drain_node", "kill_worker"}
METHODS = sorted(set(messages.REQUESTS) - DESTRUCTIVE)

_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=40),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=12,
)


def _frame(kind: int, rid: int, method: object, body: object, lens: list, payload: bytes) -> bytes:
    header = msgspec.msgpack.encode([kind, rid, method, body, lens])
    return framing.PREFIX.pack(len(header), len(payload)) + header + payload


@st.composite
def _garbage(draw) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:  # anything at all
        return draw(st.binary(min_size=1, max_size=300))
    if choice == 1:  # a plausible prefix, random header bytes
        header = draw(st.binary(max_size=100))
        plen = draw(st.integers(0, 64))
        return framing.PREFIX.pack(len(header), plen) + header + draw(st.binary(min_size=plen, max_size=plen))
    if choice == 2:  # a header of random shape
        header = msgspec.msgpack.encode(draw(_values))
        return framing.PREFIX.pack(len(header), 0) + header
    # A well-framed message for one of skate's methods, with a random body.
    payload = draw(st.binary(max_size=32))
    lens = [len(payload)] if draw(st.booleans()) else draw(st.lists(st.integers(0, 40), max_size=3))
    if sum(lens) != len(payload):
        lens = [len(payload)]
    return _frame(
        draw(st.sampled_from([framing.REQUEST, framing.NOTIFY, framing.REPLY, framing.ERROR])),
        draw(st.integers(0, 2**31)), draw(st.sampled_from(METHODS)), draw(_values), lens, payload,
    )


class Session:
    """A raw, authenticated connection: plaintext frames on Unix sockets, records on TCP."""

    def __init__(self, target, token: bytes) -> None:
        if isinstance(target, str):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(target)
        else:
            self.sock = socket.create_connection(target)
        self.sock.settimeout(5)
        hs = handshake.ClientHandshake(token)
        held = b""
        while not hs.done:
            chunk = self.sock.recv(4096)
            assert chunk, "the daemon closed the connection during the handshake"
            held += chunk
            used, out = hs.feed(memoryview(held))
            held = held[used:]
            if out:
                self.sock.sendall(out)
        self.cipher = RecordCipher(*hs.keys()) if not isinstance(target, str) else None
        self.inbox = FrameReader()
        self.inbox.space(len(held))[: len(held)] = held
        self.inbox.received(len(held))
        self.plain = FrameReader() if self.cipher else self.inbox

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"".join(bytes(p) for p in self.cipher.seal([data])) if self.cipher else data)

    def reply_to(self, rid: int, timeout: float) -> tuple | None:
        """The reply (or error reply) to ``rid``; None when the daemon dropped the connection
        (or said nothing for ``timeout`` seconds)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                if self.cipher:
                    self.cipher.open(self.inbox, self.plain)
                for kind, got, _method, raw, _bufs in self.plain.frames():
                    if kind in (framing.REPLY, framing.ERROR) and got == rid:
                        return kind, msgspec.msgpack.decode(raw)
            except ProtocolError:
                return None
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return None
            if not chunk:
                return None
            self.inbox.space(len(chunk))[: len(chunk)] = chunk
            self.inbox.received(len(chunk))

    def close(self) -> None:
        self.sock.close()


def _targets(core) -> dict:
    node = next(n for n in core.gcs_call("get_nodes") if n["alive"])

    @skate.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    assert skate.get(echo.echo.remote(1)) == 1
    addr = echo._state.info["address"]  # [id, ip, port, uds, exec port, exec uds]
    return {
        "control store (TCP)": wire.split_address(core.gcs_address),
        "node daemon (Unix)": node["uds"],
        "node daemon (TCP)": (node["ip"], node["port"]),
        "driver core worker (Unix)": core.address[3],
        "actor control endpoint (Unix)": addr[3],
        "actor execution endpoint (TCP)": (addr[1], addr[4]),
    }, echo


PROBE_RID = 7_777_777


def _fuzz(name: str, target, token: bytes, probe: bytes):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(garbage=_garbage())
    def fuzz(garbage: bytes) -> None:
        s = Session(target, token)
        try:
            s.send(garbage + probe)
            # A frame cut short leaves the daemon waiting for the rest (the
            # probe only adds to it): not hearing back soon counts as no answer.
            answer = s.reply_to(PROBE_RID, 0.5)
            # Either the connection was dropped, or the probe got its protocol error.
            assert answer is None or answer[0] == framing.ERROR, (name, answer)
        finally:
            s.close()
        # Everyone else is still served.
        fresh = Session(target, token)
        try:
            fresh.send(probe)
            assert fresh.reply_to(PROBE_RID, 10) is not None, f"the {name} stopped serving"
        finally:
            fresh.close()

    return fuzz


@pytest.mark.timeout(300)
def test_every_daemon_survives_fuzzed_frames(ray_start):
    core = runtime.current()
    targets, echo = _targets(core)
    probe = _frame(framing.REQUEST, PROBE_RID, "obj_seal", 12345, [], b"")
    for name, target in targets.items():
        _fuzz(name, target, core.token, probe)()
    # The whole cluster still works.
    assert skate.get(echo.echo.remote(2)) == 2

    @skate.remote
    def add(a, b):
        return a + b

    assert skate.get(add.remote(1, 2)) == 3


def test_a_frame_announcing_more_than_the_limit_is_refused_before_allocating():
    reader = FrameReader(max_payload=1 << 20)
    data = framing.PREFIX.pack(10, 1 << 40)
    reader.space(len(data))[: len(data)] = data
    reader.received(len(data))
    with pytest.raises(ProtocolError, match="over the limit"):
        list(reader.frames())
    assert len(reader.buffer()) < 1 << 20  # nothing was allocated for it
