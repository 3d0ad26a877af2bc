"""The handshake state machines, driven byte by byte with no sockets."""

from __future__ import annotations

import msgspec
import pytest

from skate._private.wire import framing, handshake

TOKEN = b"t" * 32


def _trickle(side: handshake.ServerHandshake | handshake.ClientHandshake, data: bytes) -> bytes:
    """Feeds ``data`` one byte at a time, as a slow peer would; returns what ``side`` sent."""
    held = bytearray()
    sent = bytearray()
    for b in data:
        held.append(b)
        used, out = side.feed(memoryview(bytes(held)))
        del held[:used]
        sent += out
    assert not held, "bytes left over after the handshake"
    return bytes(sent)


def test_both_sides_agree_byte_by_byte():
    server, client = handshake.ServerHandshake(TOKEN, b"node-1"), handshake.ClientHandshake(TOKEN, expect=b"node-1")
    assert client.hello() == b""
    to_server = _trickle(client, server.hello())
    assert not client.done and len(to_server) == handshake.ANSWER_LEN
    to_client = _trickle(server, to_server)
    assert server.done and len(to_client) == 1 + len(b"node-1") + handshake.MAC_LEN
    assert _trickle(client, to_client) == b""
    assert client.done and client.identity == b"node-1"
    # One key per direction, the same on both sides, new for every connection.
    c_send, c_recv = client.keys()
    s_send, s_recv = server.keys()
    assert (c_send, c_recv) == (s_recv, s_send) and c_send != c_recv
    again = handshake.ServerHandshake(TOKEN, b"node-1")
    other = handshake.ClientHandshake(TOKEN)
    _trickle(other, _trickle(again, _trickle(other, again.hello())))
    assert other.keys() != client.keys()


def test_server_rejects_a_wrong_token():
    server, client = handshake.ServerHandshake(TOKEN), handshake.ClientHandshake(b"x" * 32)
    with pytest.raises(handshake.AuthError, match="wrong cluster token"):
        _trickle(server, _trickle(client, server.hello()))
    assert not server.done


def test_client_rejects_a_server_without_the_token():
    impostor, client = handshake.ServerHandshake(b"x" * 32), handshake.ClientHandshake(TOKEN)
    answer = _trickle(client, impostor.hello())
    # The impostor cannot check the client's answer, but answers anyway.
    forged = handshake.server_proof(b"x" * 32, impostor.nonce, answer[handshake.MAC_LEN :], b"")
    with pytest.raises(handshake.AuthError, match="server failed"):
        _trickle(client, forged)
    assert not client.done


def test_client_rejects_a_relay_to_another_endpoint():
    # A process that took over a dead worker's port passes the client on to a
    # real skate process: its proof is genuine, but names another endpoint.
    real, client = handshake.ServerHandshake(TOKEN, b"worker-2"), handshake.ClientHandshake(TOKEN, expect=b"worker-1")
    with pytest.raises(handshake.AuthError, match="not the expected"):
        _trickle(client, _trickle(real, _trickle(client, real.hello())))
    assert not client.done


def test_an_answer_is_bound_to_both_nonces():
    server = handshake.ServerHandshake(TOKEN)
    nonce_c = handshake.new_nonce()
    # An answer recorded on another connection (another server nonce) fails.
    stale = handshake.client_answer(TOKEN, handshake.new_nonce(), nonce_c)
    with pytest.raises(handshake.AuthError):
        server.feed(memoryview(stale))


def test_a_server_answer_cannot_be_replayed_as_a_client_answer():
    nonce = handshake.new_nonce()
    assert not handshake.check_mac(TOKEN, nonce, b"c", handshake.mac(TOKEN, nonce, b"s"))


def _decoded(reader: framing.FrameReader) -> list:
    # A body is a view of the receive buffer: decoded before the next frame.
    out = [(k, rid, m, msgspec.msgpack.decode(raw), bufs) for k, rid, m, raw, bufs in reader.frames()]
    reader.release()
    return out


def test_frame_reader_yields_frames_split_anywhere():
    pieces = framing.encode(framing.REQUEST, 1, "a", [1, 2], [b"xyz"]) + framing.encode(framing.NOTIFY, 0, "b", None)
    stream = b"".join(bytes(p) for p in pieces)
    reader = framing.FrameReader(size=128)
    got = []
    for i in range(0, len(stream), 3):
        chunk = stream[i : i + 3]
        reader.buffer()[: len(chunk)] = chunk
        reader.received(len(chunk))
        got.extend(_decoded(reader))
    assert got == [(framing.REQUEST, 1, "a", [1, 2], [b"xyz"]), (framing.NOTIFY, 0, "b", None, [])]
    assert reader.n == 0


def test_frame_reader_grows_for_a_frame_larger_than_its_buffer():
    big = bytes(range(256)) * 1000
    stream = b"".join(bytes(p) for p in framing.encode(framing.REPLY, 9, None, "big", [big]))
    reader = framing.FrameReader(size=1024)
    got = []
    pos = 0
    while pos < len(stream):
        buf = reader.buffer()
        n = min(len(buf), len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        reader.received(n)
        pos += n
        got.extend(_decoded(reader))
    assert got == [(framing.REPLY, 9, None, "big", [big])]


@pytest.mark.parametrize(
    "header",
    [b"\xc1", b"\x93\x00\x00\x00", b"\x95\x07\x00\xc0\xc0\x90", b"\x95\x00\xa1x\xc0\xc0\x90"],
    ids=["undecodable", "short", "bad-kind", "bad-rid"],
)
def test_malformed_headers_are_protocol_errors(header):
    with pytest.raises(framing.ProtocolError):
        framing.decode_header(header)


def test_server_refuses_bytes_past_the_answer_before_authenticating():
    server, client = handshake.ServerHandshake(TOKEN), handshake.ClientHandshake(TOKEN)
    answer = _trickle(client, server.hello())
    with pytest.raises(handshake.AuthError, match="before authenticating"):
        server.feed(memoryview(answer + b"\x00"))
    assert not server.done
