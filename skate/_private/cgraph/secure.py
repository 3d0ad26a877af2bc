"""Channels between nodes: authenticated and encrypted like every other TCP connection of skate.

A channel between two processes of one node is an abstract Unix socket,
reachable from that host only; the dialer proves it belongs to the graph
by sending the graph's secret token, compared in constant time.  Between
nodes a channel is a TCP connection, and it is protected the way the
wire protects every TCP connection (``skate._private.wire.handshake`` and
``records``), with the graph's token as the shared secret::

    dialer (client)                         listener (server, identity "cg" + graph id)
       <- nonce_s
       -> mac(token, nonce_s | nonce_c) + nonce_c
       <- identity + mac(token, nonce_c | nonce_s | identity)
       => one key per direction; from here every byte is in AES-256-GCM records
       -> record(HELLO: token, reader, edge)
       ... the channel's frames, both ways, in records

A peer without the token learns nothing and cannot inject, replay, reorder
or cut a record without the reader noticing (the channel then closes: the
graph reports a ``RayChannelError``).  ``SealedSocket`` wraps the socket so
that ``channel.Reader`` reads plaintext from it and ``channel.Writer``
sends through ``send_sealed``.
"""

from __future__ import annotations

import hmac
import socket
import time
from typing import Any

from skate._private.cgraph import channel as ch
from skate._private.cgraph.plan import HELLO
from skate._private.wire.framing import FrameReader, ProtocolError
from skate._private.wire.handshake import ANSWER_LEN, NONCE_LEN, ClientHandshake, ServerHandshake
from skate._private.wire.records import TAG_LEN, RecordCipher

_RECORD_LEN = 4  # bytes of a record's length prefix


def identity(gid: bytes) -> bytes:
    """What a graph's listener proves it is in the handshake (a dialer expects exactly this)."""
    return b"cg" + gid


def same_token(theirs: bytes, ours: bytes) -> bool:
    """True when a peer's token is the graph's (compared in constant time)."""
    return hmac.compare_digest(theirs, ours)


class SealedSocket:
    """A connected TCP socket whose bytes travel in encrypted, authenticated records.

    Reads give plaintext (``recv``/``recv_into``, raising ``BlockingIOError``
    when no whole record is here, like a non-blocking socket); writes go
    through ``send_sealed``.  ``fileno``/``shutdown``/``close`` are the socket's.
    """

    def __init__(self, sock: socket.socket, cipher: RecordCipher) -> None:
        self.sock = sock
        self.cipher = cipher
        self.inbox = FrameReader()  # records as received
        self.plain = FrameReader()  # their plaintext, not yet read

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def send_sealed(self, chunks: list, deadline: float | None, pump: Any) -> None:
        """Sends ``chunks`` in records (see ``channel.send_all`` for the waiting and the errors).

        A send that timed out before its first byte went takes its records
        back, so the channel stays whole (the next value reuses their numbers).
        """
        records = self.cipher.seal(chunks)
        try:
            ch.send_all(self.sock, records, deadline, pump)
        except ch.ChannelTimeout as e:
            if not e.partial:
                self.cipher.rewind(len(records) // 2)
            raise

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes of plaintext; ``b""`` at the end of the stream."""
        if not self._ready():
            return b""
        held = self.plain.held()
        take = min(n, len(held))
        data = bytes(held[:take])
        self.plain.consume(take)
        return data

    def recv_into(self, view: memoryview) -> int:
        """Like ``socket.recv_into``, with plaintext."""
        if not self._ready():
            return 0
        held = self.plain.held()
        take = min(len(view), len(held))
        view[:take] = held[:take]
        self.plain.consume(take)
        return take

    def _ready(self) -> bool:
        """Makes plaintext available: True when some is, False at the end of the stream.

        Raises:
            BlockingIOError: when no whole record has come yet.
            ConnectionError: on a record that fails authentication.
        """
        while not self.plain.n:
            buf = self.inbox.buffer()
            got = self.sock.recv_into(buf)  # BlockingIOError: nothing now
            if got == 0:
                if self.inbox.n:
                    raise ConnectionError("the channel ended in the middle of a record")
                return False
            self.inbox.received(got)
            try:
                self.cipher.open(self.inbox, self.plain)
            except ProtocolError as e:
                raise ConnectionError(f"compiled graph channel: {e}") from None
        return True


def recv_exact(s: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket (set-up only).

    Raises:
        OSError: when the connection closes first, or its timeout passes.
    """
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise OSError("closed during the handshake")
        data += more
    return data


def _with_deadline(s: socket.socket, deadline: float) -> None:
    s.settimeout(max(deadline - time.monotonic(), 0.001))


def client_hello(s: socket.socket, gid: bytes, token: bytes, reader: int, edge: int, deadline: float) -> SealedSocket:
    """The dialer's side (a blocking socket): handshake, then the sealed HELLO.

    Raises:
        AuthError: when the listener does not hold the token, or is not the graph's.
        OSError: when the connection closes or ``deadline`` passes.
    """
    hs = ClientHandshake(token, expect=identity(gid))
    _with_deadline(s, deadline)
    _, answer = hs.feed(memoryview(recv_exact(s, NONCE_LEN)))
    s.sendall(answer)
    head = recv_exact(s, 1)
    hs.feed(memoryview(head + recv_exact(s, head[0] + 32)))
    sealed = SealedSocket(s, RecordCipher(*hs.keys()))
    for piece in sealed.cipher.seal([HELLO.pack(token, reader, edge)]):
        s.sendall(piece)
    return sealed


def server_hello(s: socket.socket, gid: bytes, token: bytes, deadline: float) -> tuple[SealedSocket, bytes]:
    """The listener's side (a blocking socket): handshake, then the dialer's sealed HELLO.

    Returns:
        The sealed socket and the HELLO's plaintext.

    Raises:
        AuthError: when the dialer does not hold the token.
        OSError: when the connection closes, sends nonsense or ``deadline`` passes.
    """
    hs = ServerHandshake(token, identity(gid))
    _with_deadline(s, deadline)
    s.sendall(hs.hello())
    _, proof = hs.feed(memoryview(recv_exact(s, ANSWER_LEN)))
    s.sendall(proof)
    sealed = SealedSocket(s, RecordCipher(*hs.keys()))
    size = HELLO.size + TAG_LEN
    record = recv_exact(s, _RECORD_LEN + size)
    if int.from_bytes(record[:_RECORD_LEN], "little") != size:
        raise OSError("compiled graph set-up: a malformed first record")
    inbox = sealed.inbox
    inbox.space(len(record))[: len(record)] = record
    inbox.received(len(record))
    try:
        sealed.cipher.open(inbox, sealed.plain)
    except ProtocolError as e:
        raise OSError(f"compiled graph set-up: {e}") from None
    hello = bytes(sealed.plain.held())
    sealed.plain.consume(len(hello))
    return sealed, hello
