"""Channels between nodes: the handshake on the graph's token, records on the wire, tampering, timeouts."""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time

import pytest

from skate._private.cgraph import channel as ch
from skate._private.cgraph import secure
from skate._private.wire.handshake import AuthError
from skate._private.wire.records import RecordCipher

GID = os.urandom(16)
TOKEN = os.urandom(16)


def soon(seconds: float) -> float:
    return time.monotonic() + seconds


class Relay:
    """A TCP relay between a dialer and a listener that records (and may alter) the dialer's bytes."""

    def __init__(self, target: tuple, alter_at: int | None = None) -> None:
        self.seen = bytearray()
        self.alter_at = alter_at
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.target = target
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = [self.server]
        t = threading.Thread(target=self._serve, daemon=True)
        t.start()
        self.threads.append(t)

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        up = socket.create_connection(self.target)
        self.socks += [conn, up]
        for src, dst, record in ((conn, up, True), (up, conn, False)):
            t = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    data = bytearray(data)
                    at = None if self.alter_at is None else self.alter_at - len(self.seen)
                    self.seen += data
                    if at is not None and 0 <= at < len(data):
                        data[at] ^= 0x01
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(5)


def connect(dial_to: tuple | None = None, listener_gid: bytes = GID, dialer_token: bytes = TOKEN,
            alter_at: int | None = None):
    """A sealed (dialer, listener) pair over TCP on loopback, optionally through a ``Relay``."""
    lst = socket.create_server(("127.0.0.1", 0))
    relay = Relay(lst.getsockname(), alter_at) if dial_to is None else None
    got: dict = {}

    def serve() -> None:
        conn, _ = lst.accept()
        try:
            got["server"] = secure.server_hello(conn, listener_gid, TOKEN, soon(10))
        except (OSError, ValueError) as e:
            got["error"] = e
            conn.close()

    t = threading.Thread(target=serve)
    t.start()
    s = socket.create_connection(relay.address if relay else dial_to, timeout=10)
    try:
        client = secure.client_hello(s, GID, dialer_token, 7, 3, soon(10))
    except BaseException:
        s.close()
        t.join(10)
        lst.close()
        if relay:
            relay.close()
        raise
    t.join(10)
    lst.close()
    return client, got, relay


def test_sealed_channel_round_trip_and_nothing_in_the_clear():
    client, got, relay = connect()
    try:
        server, hello = got["server"]
        assert hello == secure.HELLO.pack(TOKEN, 7, 3)
        for s in (client, server):
            s.setblocking(False)
        w, r = ch.Writer([client], [False], None, 1024, 4), ch.Reader(server, None, 1024, copy=True)
        assert w.single is None and w.sealed[0] is not None
        w.pump = ch.Inbound([r])  # one process in this test: its writer drains its reader
        marker = b"a value nobody on the wire may read" * 1000
        for v in ["small", marker, b"x" * (3 * 1024 * 1024), {"k": 1}]:
            w.write(v, soon(20))
            assert r.read(soon(20)) == v
        # The other direction: the listener writes (the driver reads an output this way).
        back_w, back_r = ch.Writer([server], [False], None, 1024, 4), ch.Reader(client, None, 1024, copy=True)
        back_w.write(marker, soon(20))
        assert back_r.read(soon(20)) == marker
        assert TOKEN not in relay.seen and b"a value nobody" not in relay.seen
    finally:
        client.close()
        got["server"][0].close()
        relay.close()


def test_a_dialer_without_the_token_is_refused():
    with pytest.raises(OSError):
        client, got, relay = connect(dialer_token=os.urandom(16))
        client.close()
        relay.close()


def test_a_listener_of_another_graph_is_refused():
    # The listener holds the token but names another graph: the dialer stops.
    with pytest.raises(AuthError, match="not the expected"):
        connect(listener_gid=os.urandom(16))


def test_a_record_altered_on_the_way_closes_the_channel():
    client, got, relay = connect()
    try:
        server, _ = got["server"]
        for s in (client, server):
            s.setblocking(False)
        w, r = ch.Writer([client], [False], None, 1024, 4), ch.Reader(server, None, 1024, copy=True)
        w.write("first", soon(5))
        assert r.read(soon(5)) == "first"
        relay.alter_at = len(relay.seen) + 10  # a byte inside the next record's ciphertext
        w.write("second", soon(5))
        with pytest.raises(ch.ChannelClosed, match="authentication"):
            r.read(soon(5))
    finally:
        client.close()
        got["server"][0].close()
        relay.close()


def test_a_send_that_timed_out_before_its_first_byte_keeps_the_channel_whole():
    # Records are numbered: a value sealed and never sent gives its numbers
    # back, so what is sent next still opens on the other side.
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    k1, k2 = os.urandom(32), os.urandom(32)
    sa, sb = secure.SealedSocket(a, RecordCipher(k1, k2)), secure.SealedSocket(b, RecordCipher(k2, k1))
    try:
        w, r = ch.Writer([sa], [False], None, 1024, 4), ch.Reader(sb, None, 1024, copy=True)
        sent = 0
        while True:  # fill the socket with small values (each all or nothing on a Unix socket)
            try:
                w.write(sent, time.monotonic())
            except ch.ChannelTimeout as e:
                assert not e.partial
                break
            sent += 1
        assert [r.read(soon(5)) for _ in range(sent)] == list(range(sent))
        w.write("after the timeout", soon(5))
        assert r.read(soon(5)) == "after the timeout"
    finally:
        a.close()
        b.close()


def test_tokens_on_the_node_are_compared_in_constant_time(monkeypatch):
    # On the node the dialer sends the token itself: the listener checks it
    # with hmac.compare_digest, and a wrong one is closed and ignored.
    from skate._private.cgraph import worker

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((bytes(a), bytes(b))) or real(a, b))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0skate-cgtest-{os.getpid()}-{GID.hex()}"
    listener.bind(name)
    listener.listen(8)
    address = {"uds": name}
    wrong = os.urandom(16)
    socks = []
    try:
        socks.append(worker.dial(address, True, GID, wrong, 7, 3, soon(5)))
        socks.append(worker.dial(address, True, GID, TOKEN, 7, 3, soon(5)))
        got = worker.accept([listener], GID, TOKEN, {(7, 3)}, soon(10))
        assert set(got) == {(7, 3)}
        got[(7, 3)].close()
        assert (wrong, TOKEN) in compared and (TOKEN, TOKEN) in compared
        socks[0].settimeout(5)
        assert socks[0].recv(1) == b""  # the wrong one was closed
    finally:
        for s in socks:
            s.close()
        listener.close()
