"""Frames on TCP are encrypted and authenticated; a relay to another endpoint is refused.

A man in the middle (a forwarding proxy here) sees only ciphertext, cannot
inject a frame into an authenticated connection, and a client that meant to
reach one skate endpoint will not talk to another one a relay passes it to.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import msgspec
import pytest

from skate._private import runtime, wire
from skate._private.wire import framing


class Proxy:
    """Forwards one TCP connection to ``target``, recording both directions."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.seen = bytearray()
        self.upstream: socket.socket | None = None
        self.threads: list[threading.Thread] = []
        self.accepted = threading.Event()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        up = socket.create_connection(self.target)
        self.upstream, self.downstream = up, down
        self.accepted.set()
        for a, b in ((down, up), (up, down)):
            t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def inject_to_server(self, data: bytes) -> None:
        self.upstream.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for s in (self.upstream, getattr(self, "downstream", None)):
            if s is not None:
                s.close()
        for t in self.threads:
            t.join(5)


def _gcs_target(core) -> tuple[str, int]:
    host, port = wire.split_address(core.gcs_address)
    return host, port


def _kv_put_frame(key: str) -> bytes:
    header = msgspec.msgpack.encode([framing.REQUEST, 99, "kv_put", ["mitm", key, True], [4]])
    return framing.PREFIX.pack(len(header), 4) + header + b"evil"


@pytest.mark.timeout(60)
def test_a_man_in_the_middle_sees_no_plaintext_and_cannot_inject(ray_start):
    core = runtime.current()
    proxy = Proxy(_gcs_target(core))
    marker = b"a-secret-value-7f3a9c"

    async def main() -> None:
        conn = await wire.connect(proxy.address, core.token, {}, expect=wire.GCS_IDENTITY)
        try:
            assert await conn.request("kv_put", ["mitm", "k", True], [marker]) is True
            got = await conn.request("kv_get", ["mitm", "k"])
            assert got[1][0] == marker
            assert marker not in proxy.seen and b"kv_put" not in proxy.seen
            # A well-formed plaintext frame slipped into the stream is not a record
            # that authenticates: the control store drops the connection unread.
            proxy.inject_to_server(_kv_put_frame("injected"))
            with pytest.raises(wire.ConnectionLost):
                await asyncio.wait_for(conn.request("ping"), 10)
        finally:
            conn.close()
        # The control store still serves, and never ran the injected request.
        clean = await wire.connect(core.gcs_address, core.token, {}, expect=wire.GCS_IDENTITY)
        try:
            assert await clean.request("kv_get", ["mitm", "injected"]) is False
        finally:
            clean.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_a_relay_to_another_endpoint_is_refused(ray_start):
    # A process on a port a client still has cached (say, of a dead worker)
    # passes the client's connection on to a real skate endpoint: the proof is
    # genuine, but it names the control store, not the worker the client meant.
    core = runtime.current()
    proxy = Proxy(_gcs_target(core))
    stale_worker_id = b"\x01" * 16

    async def main() -> None:
        with pytest.raises(wire.AuthError, match="not the expected"):
            await wire.connect(proxy.address, core.token, {}, expect=stale_worker_id)

    try:
        asyncio.run(main())
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_records_carry_large_frames_across_tcp(ray_start):
    core = runtime.current()
    big = bytes(range(256)) * (3 * 4096 + 7)  # several records' worth

    async def main() -> None:
        conn = await wire.connect(core.gcs_address, core.token, {}, expect=wire.GCS_IDENTITY)
        try:
            assert await conn.request("kv_put", ["big", "v", True], [big]) is True
            ok, bufs = await conn.request("kv_get", ["big", "v"])
            assert ok and bytes(bufs[0]) == big
        finally:
            conn.close()

    asyncio.run(main())
