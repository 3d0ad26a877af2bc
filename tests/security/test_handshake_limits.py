"""Limits on peers that have not proved the token: deadline, cap, size.

A peer without the token can open connections to a daemon's port; it must
not be able to hold them (deadline), pile them up (cap per listener) or
send more than the fixed-size handshake answer before it is authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time

import msgspec
import psutil
import pytest

import skate
from skate._private import wire
from skate._private.config import Config
from skate._private.wire import framing, handshake


@skate.remote(num_cpus=0)
def plus_one(x):
    return x + 1


@contextlib.contextmanager
def _cluster(monkeypatch, handshake_timeout_s: float, max_pending: int):
    """A one-node cluster whose daemons use these limits (they read them from the environment)."""
    from skate.cluster_utils import Cluster

    monkeypatch.setenv("SKATE_HANDSHAKE_TIMEOUT_S", str(handshake_timeout_s))
    monkeypatch.setenv("SKATE_MAX_PENDING_HANDSHAKES", str(max_pending))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        if skate.is_initialized():
            skate.shutdown()
        c.shutdown()


def _address(cluster, target: str) -> tuple[str, int]:
    if target == "gcs":
        host, _, port = cluster.address.rpartition(":")
        return host, int(port)
    ports = [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(cluster.head_node.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert ports, "the node daemon listens on no TCP port"
    return ports[0]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def _recv_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection; fails if it does not within ``timeout``."""
    sock.settimeout(0.1)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for more than {timeout}s")


def _can_connect(address: str, token: bytes, timeout: float = 5) -> bool:
    async def go() -> None:
        conn = await wire.connect(address, token, {}, timeout=timeout)
        try:
            assert await conn.request("ping") == "pong"
        finally:
            conn.close()

    try:
        asyncio.run(go())
        return True
    except (OSError, asyncio.TimeoutError):
        return False


def test_defaults():
    cfg = Config()
    assert cfg.handshake_timeout_s == 5.0
    assert cfg.max_pending_handshakes == 64


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["gcs", "raylet"])
def test_silent_peer_is_dropped_after_the_deadline(monkeypatch, target):
    with _cluster(monkeypatch, handshake_timeout_s=1, max_pending=64) as c:
        addr = _address(c, target)
        with socket.create_connection(addr, timeout=10) as s:
            _recv_exactly(s, handshake.NONCE_LEN)
            start = time.monotonic()
            assert _recv_until_closed(s, timeout=10) == b""
            assert 0.5 < time.monotonic() - start < 5
        # A peer that trickles its answer a byte at a time is held to the same deadline.
        with socket.create_connection(addr, timeout=10) as s:
            _recv_exactly(s, handshake.NONCE_LEN)
            start = time.monotonic()
            s.settimeout(0.1)
            sent = 0
            while time.monotonic() - start < 10:
                try:
                    if s.recv(1) == b"":
                        break
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    break
                try:
                    s.send(b"\0")
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert time.monotonic() - start < 5, "a trickling peer outlived the deadline"
            assert sent < handshake.MAC_LEN + handshake.NONCE_LEN
        assert _can_connect(c.address, c._info["token"])


@pytest.mark.timeout(90)
def test_unauthenticated_flood_is_capped_and_authenticated_clients_keep_working(monkeypatch):
    cap = 8
    with _cluster(monkeypatch, handshake_timeout_s=60, max_pending=cap) as c:
        skate.init(address=c.address)  # connected (and authenticated) before the flood
        addr = _address(c, "gcs")
        flood = []
        try:
            for _ in range(cap):
                s = socket.create_connection(addr, timeout=10)
                flood.append(s)
                _recv_exactly(s, handshake.NONCE_LEN)  # challenged: one of the pending handshakes
            for _ in range(2 * cap):
                s = socket.create_connection(addr, timeout=10)
                flood.append(s)
                start = time.monotonic()
                # Past the cap: closed at once, without even a challenge.
                assert _recv_until_closed(s, timeout=5) == b""
                assert time.monotonic() - start < 3
            # What was authenticated before the flood still works, the control store included.
            assert skate.get(plus_one.remote(1), timeout=60) == 2
            assert skate.cluster_resources()["CPU"] == 1
            assert skate.get([plus_one.remote(i) for i in range(10)], timeout=60) == list(range(1, 11))
            # A client that connects meanwhile is turned away before the
            # challenge, and keeps trying until its timeout.
            late: dict = {}
            t = threading.Thread(target=lambda: late.update(ok=_can_connect(c.address, c._info["token"], 30)))
            t.start()
        finally:
            for s in flood:
                s.close()
        # Once the flood is gone, it (and anyone) gets in.
        t.join(40)
        assert late.get("ok") is True
        assert _can_connect(c.address, c._info["token"])


def _kv_put_frame() -> bytes:
    header = msgspec.msgpack.encode([framing.REQUEST, 1, "kv_put", ["sec-test", "preauth", True], [5]])
    return framing.PREFIX.pack(len(header), 5) + header + b"value"


@pytest.mark.parametrize("target", ["gcs", "raylet"])
def test_bytes_past_the_handshake_answer_are_dropped(cluster, target):
    """Before the server's proof, a client sends exactly its answer; a frame sent
    along with it is dropped, with the connection -- even from a token holder."""
    token = cluster._info["token"]
    addr = _address(cluster, target)
    with socket.create_connection(addr, timeout=10) as s:
        nonce = _recv_exactly(s, handshake.NONCE_LEN)
        s.sendall(handshake.client_answer(token, nonce, handshake.new_nonce()) + _kv_put_frame())
        assert _recv_until_closed(s, timeout=10) == b"", "the server accepted bytes past the handshake answer"
    # An unauthenticated megabyte is dropped just the same.
    with socket.create_connection(addr, timeout=10) as s:
        _recv_exactly(s, handshake.NONCE_LEN)
        try:
            s.sendall(os.urandom(1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _recv_until_closed(s, timeout=10) == b""

    async def stored() -> object:
        conn = await wire.connect(cluster.address, token, {}, timeout=10)
        try:
            return await conn.request("kv_get", ["sec-test", "preauth"])
        finally:
            conn.close()

    found = asyncio.run(stored())
    assert (found[0] if isinstance(found, tuple) else found) is False, "the pre-auth frame was executed"
    assert _can_connect(cluster.address, token)
