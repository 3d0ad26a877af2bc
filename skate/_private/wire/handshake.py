"""The authentication handshake, as pure state machines (no sockets).

Client C, server S with identity I (its node or worker id, or ``gcs``),
cluster token T::

    S -> C : nonce_s
    C -> S : mac(T, "c" | nonce_s | nonce_c) + nonce_c
    S -> C : len(I) + I + mac(T, "s" | nonce_c | nonce_s | I)   (or close, on a wrong answer)

Only after it does either side decode a msgpack header, let alone a pickle.
Both answers cover both nonces, so neither can be replayed on another
connection; the server's covers its identity, so a client that expected
another endpoint (a relay passing it on to some other skate process) stops
there.  Both sides then derive one key per direction from T, the nonces and
I, for the records that protect every later frame on TCP (see ``records``).

Each side is fed the bytes received so far and answers how many it used
and what to send; ``done`` says it is over; a wrong answer raises
``AuthError``.  A test can drive both sides byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os

NONCE_LEN = 32
MAC_LEN = 32
ANSWER_LEN = MAC_LEN + NONCE_LEN  # what a client sends
MAX_IDENTITY = 64


class AuthError(ConnectionError):
    """The peer did not prove it holds the cluster token (or is not the expected endpoint)."""


def new_nonce() -> bytes:
    """A fresh random challenge."""
    return os.urandom(NONCE_LEN)


def mac(token: bytes, data: bytes, role: bytes) -> bytes:
    """HMAC-SHA256 of ``role + data`` under ``token``.

    ``role`` keeps one side's answer from being replayed as the other's.
    """
    return hmac.new(token, role + data, hashlib.sha256).digest()


def check_mac(token: bytes, data: bytes, role: bytes, answer: bytes) -> bool:
    """True when ``answer`` proves the peer holds ``token``."""
    return hmac.compare_digest(mac(token, data, role), answer)


def client_answer(token: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
    """What a client holding ``token`` sends to the challenge ``nonce_s``."""
    return mac(token, nonce_s + nonce_c, b"c") + nonce_c


def server_proof(token: bytes, nonce_s: bytes, nonce_c: bytes, identity: bytes) -> bytes:
    """What a server holding ``token`` answers, naming itself."""
    return bytes([len(identity)]) + identity + mac(token, nonce_c + nonce_s + identity, b"s")


def session_keys(token: bytes, nonce_s: bytes, nonce_c: bytes, identity: bytes) -> tuple[bytes, bytes]:
    """The connection's keys: ``(client to server, server to client)``."""
    salt = nonce_s + nonce_c + identity
    return mac(token, salt, b"k-c2s"), mac(token, salt, b"k-s2c")


class ServerHandshake:
    """The server's side: challenge first, then check the client's answer."""

    def __init__(self, token: bytes, identity: bytes = b"") -> None:
        if len(identity) > MAX_IDENTITY:
            raise ValueError("an endpoint identity is at most 64 bytes")
        self.token = token
        self.identity = identity
        self.nonce = new_nonce()
        self.peer_nonce = b""
        self.done = False

    @property
    def challenged(self) -> bool:
        """The server challenges at once."""
        return True

    def hello(self) -> bytes:
        """What the server sends as soon as the connection is made."""
        return self.nonce

    def feed(self, data: memoryview) -> tuple[int, bytes]:
        """Takes received bytes; returns ``(bytes used, bytes to send)``."""
        if self.done:
            return 0, b""
        if len(data) > ANSWER_LEN:
            # A client sends nothing more before the server's proof.
            raise AuthError(f"peer sent {len(data)} bytes before authenticating (the answer is {ANSWER_LEN})")
        if len(data) < ANSWER_LEN:
            return 0, b""
        theirs = bytes(data[MAC_LEN:ANSWER_LEN])
        if not check_mac(self.token, self.nonce + theirs, b"c", bytes(data[:MAC_LEN])):
            raise AuthError("wrong cluster token")
        self.peer_nonce = theirs
        self.done = True
        return ANSWER_LEN, server_proof(self.token, self.nonce, theirs, self.identity)

    def keys(self) -> tuple[bytes, bytes]:
        """``(send key, receive key)`` of this side."""
        c2s, s2c = session_keys(self.token, self.nonce, self.peer_nonce, self.identity)
        return s2c, c2s


class ClientHandshake:
    """The client's side: answer the server's challenge, then check its proof.

    ``expect``: the identity the server must have (None: any).
    """

    def __init__(self, token: bytes, expect: bytes | None = None) -> None:
        self.token = token
        self.expect = expect
        self.nonce = b""
        self.server_nonce = b""
        self.identity = b""  # the server's, once done
        self.done = False

    @property
    def challenged(self) -> bool:
        """The server's challenge has come."""
        return bool(self.nonce)

    def hello(self) -> bytes:
        """The client speaks only when challenged."""
        return b""

    def feed(self, data: memoryview) -> tuple[int, bytes]:
        """Takes received bytes; returns ``(bytes used, bytes to send)``."""
        used, out = 0, b""
        if not self.nonce:
            if len(data) < NONCE_LEN:
                return 0, b""
            self.server_nonce = bytes(data[:NONCE_LEN])
            self.nonce = new_nonce()
            out = client_answer(self.token, self.server_nonce, self.nonce)
            used = NONCE_LEN
        if self.done or len(data) - used < 1:
            return used, out
        n = data[used]
        if n > MAX_IDENTITY:
            raise AuthError("malformed server proof")
        if len(data) - used < 1 + n + MAC_LEN:
            return used, out
        identity = bytes(data[used + 1 : used + 1 + n])
        answer = bytes(data[used + 1 + n : used + 1 + n + MAC_LEN])
        if not check_mac(self.token, self.nonce + self.server_nonce + identity, b"s", answer):
            raise AuthError("server failed to prove the cluster token")
        if self.expect is not None and identity != self.expect:
            raise AuthError(
                f"reached the skate endpoint {identity.hex() or 'unnamed'}, not the expected "
                f"{self.expect.hex()}: a stale address, or a relay"
            )
        self.identity = identity
        self.done = True
        return used + 1 + n + MAC_LEN, out

    def keys(self) -> tuple[bytes, bytes]:
        """``(send key, receive key)`` of this side."""
        c2s, s2c = session_keys(self.token, self.server_nonce, self.nonce, self.identity)
        return c2s, s2c
