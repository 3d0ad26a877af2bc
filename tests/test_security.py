"""The cluster token, the handshake and what the daemons expose.

Every connection proves it holds the cluster token (an HMAC challenge)
before anything it sends is decoded; the token file and session folder are
owner-only; daemons and workers listen on the loopback interface only.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import struct
import time

import msgspec
import psutil
import pytest
from conftest import wait_for

import skate
from skate._private import wire
from skate._private.wire import framing, handshake


@skate.remote(num_cpus=0)
def plus_one(x):
    return x + 1


@skate.remote(num_cpus=0)
def getpid():
    return os.getpid()


class _CreatesFile:
    """Unpickling this creates ``path`` (what a malicious peer would send)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _recv_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails on timeout)."""
    sock.settimeout(0.2)
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
    raise AssertionError(f"the server did not close the connection within {timeout}s")


def _cluster_works(cluster) -> None:
    skate.init(address=cluster.address)
    try:
        assert skate.get(plus_one.remote(41), timeout=60) == 42
        assert skate.cluster_resources()["CPU"] == 1
    finally:
        skate.shutdown()


# --- the token ------------------------------------------------------------------------


def test_wrong_token_argument_is_rejected(cluster):
    with pytest.raises(ConnectionError) as info:
        skate.init(address=cluster.address, _token="wrong")
    msg = str(info.value).lower()
    assert "token" in msg or "authentic" in msg or "rejected" in msg
    assert not skate.is_initialized()
    _cluster_works(cluster)


def test_wrong_token_env_is_rejected(cluster, monkeypatch):
    monkeypatch.setenv("SKATE_CLUSTER_TOKEN", "wrong")
    with pytest.raises(ConnectionError) as info:
        skate.init(address=cluster.address)
    msg = str(info.value).lower()
    assert "token" in msg or "authentic" in msg or "rejected" in msg
    assert not skate.is_initialized()
    monkeypatch.delenv("SKATE_CLUSTER_TOKEN")
    _cluster_works(cluster)


def test_right_token_given_explicitly_is_accepted(cluster):
    token = cluster._info["token"].decode()
    skate.init(address=cluster.address, _token=token)
    assert skate.get(plus_one.remote(1), timeout=60) == 2


def test_wrong_token_many_times_then_right(cluster):
    for _ in range(5):
        with pytest.raises(ConnectionError):
            skate.init(address=cluster.address, _token=os.urandom(24).hex())
        assert not skate.is_initialized()
    _cluster_works(cluster)


def test_rpc_connect_with_wrong_token_raises_auth_error(cluster):
    import asyncio

    async def go():
        conn = await wire.connect(cluster.address, b"not-the-token", {}, timeout=10)
        conn.close()

    with pytest.raises(handshake.AuthError):
        asyncio.run(go())


def test_unknown_address_without_token_fails_cleanly():
    # No record of this address on this machine and no token given.
    with pytest.raises(ConnectionError):
        skate.init(address="127.0.0.1:1", _token=None)
    assert not skate.is_initialized()


# --- raw bytes on the daemons' ports -------------------------------------------------------


def _listening_tcp_ports(pid: int) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def _garbage_payloads(path: str) -> list[bytes]:
    evil = pickle.dumps(_CreatesFile(path), protocol=5)
    header = msgspec.msgpack.encode([framing.REQUEST, 1, "get_nodes", None, [len(evil)]])
    frame = framing.PREFIX.pack(len(header), len(evil)) + header + evil
    return [
        evil + b"\0" * 64,  # a pickle where the handshake answer should be
        b"\0" * (handshake.MAC_LEN + handshake.NONCE_LEN) + frame,  # a wrong answer, then a well-formed frame
        os.urandom(handshake.MAC_LEN + handshake.NONCE_LEN) + evil,  # random bytes, then a pickle
        frame + evil,  # a frame as if there were no handshake
        struct.pack("<IQ", 2**31, 2**62) + b"x" * 200,  # absurd lengths
    ]


@pytest.mark.parametrize("target", ["gcs", "raylet", "worker"])
def test_garbage_and_pickles_are_dropped_before_decoding(cluster, tmp_path, target):
    if target == "gcs":
        host, port = _host_port(cluster.address)
    elif target == "raylet":
        ports = _listening_tcp_ports(cluster.head_node.pid)
        assert ports, "the node daemon listens on no TCP port"
        host, port = ports[0]
    else:
        skate.init(address=cluster.address)
        worker_pid = skate.get(getpid.remote(), timeout=60)
        ports = _listening_tcp_ports(worker_pid)
        assert ports, "the worker listens on no TCP port"
        host, port = ports[0]
        skate.shutdown()
    canary = tmp_path / "pwned"
    for payload in _garbage_payloads(str(canary)):
        with socket.create_connection((host, port), timeout=10) as s:
            nonce = b""
            s.settimeout(10)
            while len(nonce) < handshake.NONCE_LEN:
                chunk = s.recv(handshake.NONCE_LEN - len(nonce))
                assert chunk, "the server closed before sending its challenge"
                nonce += chunk
            try:
                s.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            rest = _recv_until_closed(s)
            # Nothing but a refusal: no proof of the token, no reply frame.
            assert rest == b"", f"the server answered an unauthenticated peer with {rest[:64]!r}"
        assert not canary.exists(), "a pickle from an unauthenticated peer was loaded"
    assert not canary.exists()
    _cluster_works(cluster)


def test_silent_peer_does_not_block_others(cluster):
    """A connection that never answers the challenge does not stall the server."""
    host, port = _host_port(cluster.address)
    with socket.create_connection((host, port), timeout=10) as idle:
        idle.recv(handshake.NONCE_LEN)
        _cluster_works(cluster)


def test_valid_handshake_then_pickle_in_method_is_not_executed(cluster, tmp_path):
    """Even an authenticated peer's frame headers are msgpack, never pickle."""
    import asyncio

    canary = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(str(canary)), protocol=5)

    async def go():
        conn = await wire.connect(cluster.address, cluster._info["token"], {}, timeout=10)
        try:
            with pytest.raises(wire.RemoteError):
                await conn.request("no_such_method", None, [evil])
            # The control store keeps values as opaque bytes: it never loads them.
            assert await conn.request("kv_put", ["test-ns", "evil", True], [evil]) is True
            found, bufs = await conn.request("kv_get", ["test-ns", "evil"])
            assert found is True and bufs == [evil]
            assert await conn.request("ping") == "pong"
        finally:
            conn.close()

    asyncio.run(go())
    assert not canary.exists()


# --- files and sockets ----------------------------------------------------------------------


def test_token_file_and_session_dir_are_owner_only(cluster):
    token_file = cluster._info["token_file"]
    session_dir = cluster._info["session_dir"]
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(session_dir).st_mode) == 0o700
    assert os.stat(token_file).st_uid == os.getuid()
    with open(token_file, "rb") as f:
        token = f.read().strip()
    assert len(token) >= 32 and token == cluster._info["token"]
    # Every Unix socket in the session is owner-only too.
    socks = [os.path.join(session_dir, n) for n in os.listdir(session_dir) if n.endswith(".sock")]
    assert socks, "the node daemon made no Unix socket in the session folder"
    for path in socks:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
    # The record that maps the address to the token file is owner-only as well.
    from skate._private.config import CONFIG

    clusters = os.path.join(CONFIG.temp_dir, "clusters")
    assert stat.S_IMODE(os.stat(clusters).st_mode) & 0o077 == 0
    for name in os.listdir(clusters):
        assert stat.S_IMODE(os.stat(os.path.join(clusters, name)).st_mode) & 0o077 == 0, name


def test_embedded_cluster_session_is_owner_only(ray_start):
    from skate._private import api

    head = api._head
    assert head is not None
    assert stat.S_IMODE(os.stat(head["token_file"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(head["session_dir"]).st_mode) == 0o700


def test_tokens_differ_between_clusters(cluster):
    from skate.cluster_utils import Cluster

    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        assert other._info["token"] != cluster._info["token"]
        assert other._info["session_dir"] != cluster._info["session_dir"]
    finally:
        other.shutdown()


def test_everything_listens_on_loopback_only(cluster):
    cluster.add_node(num_cpus=1)
    skate.init(address=cluster.address)

    @skate.remote
    class A:
        def pid(self):
            return os.getpid()

    a = A.remote()
    skate.get(a.pid.remote(), timeout=60)
    skate.get([plus_one.remote(i) for i in range(4)], timeout=60)
    me = psutil.Process()

    def listening() -> dict[int, list]:
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                conns = p.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            out[p.pid] = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        return out

    ports = listening()
    daemons = {cluster._gcs_proc.proc.pid, cluster.head_node.pid, *(n.pid for n in cluster.worker_nodes)}
    for pid in daemons:
        assert ports.get(pid), f"daemon pid {pid} listens on no TCP port"
    assert sum(len(v) for v in ports.values()) >= len(daemons) + 1
    for pid, addrs in ports.items():
        for laddr in addrs:
            assert laddr.ip in ("127.0.0.1", "::1"), f"pid {pid} listens on {laddr.ip}:{laddr.port}"


def test_workers_do_not_get_token_from_cmdline(cluster):
    """The token never appears on a command line (visible to every user via ps)."""
    skate.init(address=cluster.address)
    skate.get(plus_one.remote(0), timeout=60)
    token = cluster._info["token"].decode()
    me = psutil.Process()
    procs = wait_for(lambda: me.children(recursive=True), what="daemon processes")
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        assert token not in cmd, f"pid {p.pid} has the token on its command line"
