"""Unit tests of the wire format (frames, HMAC handshake) and the RPC layer
on a real Unix socket in an asyncio loop (no cluster)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import msgspec
import pytest

from skate._private import wire
from skate._private.wire import framing, handshake

TOKEN = b"0123456789abcdef" * 2


# --- frames --------------------------------------------------------------------------


def _parse(pieces: list) -> tuple:
    raw = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    hlen, plen = framing.PREFIX.unpack_from(raw, 0)
    header = raw[framing.PREFIX.size : framing.PREFIX.size + hlen]
    payload = raw[framing.PREFIX.size + hlen :]
    assert len(payload) == plen
    kind, rid, method, raw, lens = framing.decode_header(header)
    body = msgspec.msgpack.decode(raw)
    bufs, off = [], 0
    for ln in lens:
        bufs.append(payload[off : off + ln])
        off += ln
    return kind, rid, method, body, bufs


def test_encode_without_buffers():
    pieces = framing.encode(framing.REQUEST, 7, "ping", {"a": [1, 2], "b": b"\x00"})
    assert _parse(pieces) == (framing.REQUEST, 7, "ping", {"a": [1, 2], "b": b"\x00"}, [])


def test_encode_with_buffers_keeps_them_out_of_the_header():
    big = bytearray(b"x" * 100_000)
    pieces = framing.encode(framing.REPLY, 3, None, [1, "two"], [b"abc", big, memoryview(b"")])
    # The buffers are passed through as they are, not copied into the header.
    assert pieces[-2] is big
    hlen, plen = framing.PREFIX.unpack(bytes(pieces[0]))
    assert plen == 3 + len(big)
    assert hlen < 100
    kind, rid, method, body, bufs = _parse(pieces)
    assert (kind, rid, method, body) == (framing.REPLY, 3, None, [1, "two"])
    assert bufs == [b"abc", bytes(big), b""]


def test_frame_kinds_are_distinct():
    assert len({framing.REQUEST, framing.REPLY, framing.ERROR, framing.NOTIFY}) == 4


def test_decode_header_int_keys():
    header = msgspec.msgpack.encode([framing.NOTIFY, 0, "m", {1: "x"}, []])
    kind, rid, method, raw, lens = framing.decode_header(header)
    assert (kind, rid, method, lens) == (framing.NOTIFY, 0, "m", [])
    assert msgspec.msgpack.decode(raw) == {1: "x"}


# --- HMAC --------------------------------------------------------------------------------


def test_mac_checks():
    nonce = handshake.new_nonce()
    assert len(nonce) == handshake.NONCE_LEN
    assert handshake.new_nonce() != nonce
    answer = handshake.mac(TOKEN, nonce, b"c")
    assert len(answer) == handshake.MAC_LEN
    assert handshake.check_mac(TOKEN, nonce, b"c", answer)
    assert not handshake.check_mac(b"wrong token", nonce, b"c", answer)
    assert not handshake.check_mac(TOKEN, handshake.new_nonce(), b"c", answer)
    # A server's answer cannot be replayed as a client's.
    assert not handshake.check_mac(TOKEN, nonce, b"s", answer)
    assert not handshake.check_mac(TOKEN, nonce, b"c", answer[:-1] + bytes([answer[-1] ^ 1]))


def test_auth_error_is_a_connection_error():
    assert issubclass(handshake.AuthError, ConnectionError)


# --- RPC over a Unix socket -------------------------------------------------------------------


@pytest.fixture
def sock_path(tmp_path):
    path = str(tmp_path / "s.sock")
    if len(path) > 100:  # Unix socket paths are short
        import tempfile

        d = tempfile.mkdtemp(prefix="skt")
        path = os.path.join(d, "s.sock")
    return path


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_request_reply(sock_path):
    seen = []

    def echo(conn, body, bufs):
        seen.append(body)
        return {"echo": body}

    async def add(conn, body, bufs):
        await asyncio.sleep(0)
        return body[0] + body[1]

    def with_bufs(conn, body, bufs):
        return wire.Reply(len(bufs), [b"".join(bufs), b"second"])

    def fails(conn, body, bufs):
        raise ValueError("handler broke")

    async def main():
        handlers = {"echo": echo, "add": add, "with_bufs": with_bufs, "fails": fails}
        srv = await wire.serve_unix(sock_path, TOKEN, handlers)
        assert os.stat(sock_path).st_mode & 0o777 == 0o600
        conn = await wire.connect(sock_path, TOKEN)
        try:
            assert await conn.request("echo", [1, "a", b"b"]) == {"echo": [1, "a", b"b"]}
            assert await conn.request("add", [2, 3]) == 5
            body, bufs = await conn.request("with_bufs", None, [b"ab", b"cd"])
            assert body == 2
            assert [bytes(b) for b in bufs] == [b"abcd", b"second"]
            with pytest.raises(wire.RemoteError, match="handler broke"):
                await conn.request("fails")
            with pytest.raises(wire.RemoteError, match="no handler"):
                await conn.request("no_such_method")
            # Many requests in flight: each reply goes to its own request.
            results = await asyncio.gather(*(conn.request("add", [i, i]) for i in range(200)))
            assert results == [2 * i for i in range(200)]
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()
        assert seen == [[1, "a", b"b"]]

    run(main())


def test_large_payload(sock_path):
    big = os.urandom(5 * 1024 * 1024)

    def size(conn, body, bufs):
        return wire.Reply(sum(len(b) for b in bufs), bufs)

    async def main():
        srv = await wire.serve_unix(sock_path, TOKEN, {"size": size})
        conn = await wire.connect(sock_path, TOKEN)
        try:
            n, bufs = await conn.request("size", None, [big, b"tail"])
            assert n == len(big) + 4
            assert bytes(bufs[0]) == big and bytes(bufs[1]) == b"tail"
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()

    run(main())


@pytest.mark.parametrize("n", [1023, 1025, 3000])
def test_frames_with_more_buffers_than_one_sendmsg_takes(sock_path, n):
    # The kernel takes at most IOV_MAX (1024) pieces per sendmsg.
    pieces = [bytes([i % 256]) * (i % 7 + 1) for i in range(n)]

    def echo(conn, body, bufs):
        return wire.Reply(len(bufs), bufs)

    async def main():
        srv = await wire.serve_unix(sock_path, TOKEN, {"echo": echo})
        conn = await wire.connect(sock_path, TOKEN)
        try:
            count, bufs = await asyncio.wait_for(conn.request("echo", None, pieces), 10)
            assert count == n
            assert [bytes(b) for b in bufs] == pieces
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()

    run(main())


def test_notify(sock_path):
    async def main():
        got = asyncio.Queue()

        def note(conn, body, bufs):
            got.put_nowait((body, [bytes(b) for b in bufs]))
            return "ignored"

        srv = await wire.serve_unix(sock_path, TOKEN, {"note": note})
        conn = await wire.connect(sock_path, TOKEN)
        try:
            assert conn.notify("note", {"n": 1}) is None
            conn.notify("note", {"n": 2}, [b"payload"])
            conn.notify("unknown_method", 3)  # ignored, no reply, no error
            assert await got.get() == ({"n": 1}, [])
            assert await got.get() == ({"n": 2}, [b"payload"])
            # The connection still works.
            conn.notify("note", 4)
            assert await got.get() == (4, [])
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()

    run(main())


def test_server_can_call_the_client(sock_path):
    async def main():
        server_side = asyncio.get_running_loop().create_future()

        def hello(conn, body, bufs):
            server_side.set_result(conn)
            return "hi"

        srv = await wire.serve_unix(sock_path, TOKEN, {"greet": hello})
        conn = await wire.connect(sock_path, TOKEN, {"whoami": lambda c, b, bufs: "client"})
        try:
            assert await conn.request("greet") == "hi"
            back = await server_side
            assert await back.request("whoami") == "client"
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()

    run(main())


def test_request_from_another_thread(sock_path):
    async def main():
        srv = await wire.serve_unix(sock_path, TOKEN, {"double": lambda c, b, bufs: b * 2})
        conn = await wire.connect(sock_path, TOKEN)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def callback(result, error):
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result((result, error)))

        try:
            t = threading.Thread(target=conn.request_cb, args=("double", 21, (), callback))
            t.start()
            assert await done == (42, None)
            t.join()
        finally:
            conn.close()
            srv.close()
            await srv.wait_closed()

    run(main())


def test_pending_requests_fail_when_the_connection_closes(sock_path):
    async def main():
        never = asyncio.get_running_loop().create_future()

        async def hang(conn, body, bufs):
            await never
            return None

        srv = await wire.serve_unix(sock_path, TOKEN, {"hang": hang})
        conn = await wire.connect(sock_path, TOKEN)
        try:
            fut = conn.request("hang")
            await asyncio.sleep(0)
            conn.close()
            with pytest.raises(wire.ConnectionLost):
                await fut
            with pytest.raises(wire.ConnectionLost):
                await conn.request("hang")
        finally:
            never.cancel()
            srv.close()
            await srv.wait_closed()

    run(main())


def test_wrong_token_is_rejected(sock_path):
    calls = []

    def handler(conn, body, bufs):
        calls.append(body)
        return "should not run"

    async def main():
        srv = await wire.serve_unix(sock_path, TOKEN, {"secret": handler, "note": handler})
        try:
            with pytest.raises(handshake.AuthError):
                conn = await wire.connect(sock_path, b"not the token", timeout=10)
                # Were it let in, it would now reach the handler.
                conn.notify("note", 1)
                await conn.request("secret", 1)
            # The right token still works and the handler ran only for it.
            good = await wire.connect(sock_path, TOKEN)
            assert await good.request("secret", 2) == "should not run"
            good.close()
        finally:
            srv.close()
            await srv.wait_closed()

    run(main())
    assert calls == [2]


def test_client_rejects_a_server_without_the_token(sock_path):
    calls = []

    async def main():
        srv = await wire.serve_unix(sock_path, b"another token", {"x": lambda c, b, bufs: calls.append(b)})
        try:
            with pytest.raises(ConnectionError):
                await wire.connect(sock_path, TOKEN, timeout=10)
        finally:
            srv.close()
            await srv.wait_closed()

    run(main())
    assert calls == []


def test_unauthenticated_frames_are_never_decoded(sock_path):
    calls = []

    def handler(conn, body, bufs):
        calls.append(body)
        return "ran"

    async def main():
        srv = await wire.serve_unix(sock_path, TOKEN, {"secret": handler})
        loop = asyncio.get_running_loop()
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            await loop.sock_connect(s, sock_path)
            nonce = b""
            while len(nonce) < handshake.NONCE_LEN:
                chunk = await loop.sock_recv(s, handshake.NONCE_LEN - len(nonce))
                assert chunk
                nonce += chunk
            # Skip the handshake: send frames straight away (padded past the MAC size).
            frame = b"".join(bytes(p) for p in framing.encode(framing.REQUEST, 1, "secret", "x"))
            await loop.sock_sendall(s, frame * 10)
            # The server hangs up without answering.
            data = b""
            while True:
                chunk = await loop.sock_recv(s, 4096)
                if not chunk:
                    break
                data += chunk
            assert data == b""
            s.close()
        finally:
            srv.close()
            await srv.wait_closed()

    run(main())
    assert calls == []


def test_split_address():
    assert wire.split_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert wire.split_address(("h", "12")) == ("h", 12)
    assert wire.split_address(["h", 5]) == ("h", 5)


def test_tcp_server(sock_path):
    async def main():
        srv = await wire.serve_tcp("127.0.0.1", 0, TOKEN, {"ping": lambda c, b, bufs: "pong"})
        port = srv.sockets[0].getsockname()[1]
        try:
            conn = await wire.connect(f"127.0.0.1:{port}", TOKEN)
            assert await conn.request("ping") == "pong"
            conn.close()
            conn = await wire.connect(("127.0.0.1", port), TOKEN)
            assert await conn.request("ping") == "pong"
            conn.close()
            with pytest.raises(handshake.AuthError):
                await wire.connect(("127.0.0.1", port), b"bad", timeout=10)
        finally:
            srv.close()
            await srv.wait_closed()

    run(main())


@pytest.mark.parametrize(
    "lens, plen, message",
    [
        ([10, -5], 5, "malformed frame header"),  # sums to the payload, but a length is negative
        ([-1], -1, "over the limit"),
        ([4, 4], 9, "do not add up"),
        ([9], 8, "do not add up"),
        ([], 3, "do not add up"),
    ],
)
def test_frames_whose_buffer_lengths_are_wrong_are_refused(lens, plen, message):
    """A frame's buffer lengths are each 0 or more and add up to its payload
    length; a frame that breaks this is refused, never read into the next one."""
    header = msgspec.msgpack.encode([framing.REQUEST, 1, "m", {}, lens])
    payload = b"p" * max(plen, 0)
    data = framing.PREFIX.pack(len(header), plen & 0xFFFFFFFFFFFFFFFF if plen < 0 else plen) + header + payload
    reader = framing.FrameReader()
    reader.buffer()[: len(data)] = data
    reader.received(len(data))
    with pytest.raises(wire.ProtocolError, match=message):
        reader.frames()
