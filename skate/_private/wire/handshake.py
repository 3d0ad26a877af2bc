"""The authentication handshake, as pure state machines (no sockets).

Client C, server S, cluster token T::

    S -> C : nonce_s
    C -> S : mac(T, nonce_s, "c") + nonce_c
    S -> C : mac(T, nonce_c, "s")          (or close, on a wrong answer)

Only after it does either side decode a msgpack header, let alone a pickle.
Each side is fed the bytes received so far and answers how many it used,
what to send, and whether it is done; a wrong answer raises ``AuthError``.
A test can drive both sides byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os

NONCE_LEN = 32
MAC_LEN = 32


class AuthError(ConnectionError):
    """The peer did not prove it holds the cluster token."""


def new_nonce() -> bytes:
    """A fresh random challenge."""
    return os.urandom(NONCE_LEN)


def mac(token: bytes, nonce: bytes, role: bytes) -> bytes:
    """The answer to ``nonce`` for a peer holding ``token``.

    ``role`` keeps a server's answer from being replayed as a client's.
    """
    return hmac.new(token, role + nonce, hashlib.sha256).digest()


def check_mac(token: bytes, nonce: bytes, role: bytes, answer: bytes) -> bool:
    """True when ``answer`` proves the peer holds ``token``."""
    return hmac.compare_digest(mac(token, nonce, role), answer)


class ServerHandshake:
    """The server's side: challenge first, then check the client's answer."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.nonce = new_nonce()
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
        if len(data) > MAC_LEN + NONCE_LEN:
            # A client sends nothing more before the server's proof.
            raise AuthError(f"peer sent {len(data)} bytes before authenticating (the answer is {MAC_LEN + NONCE_LEN})")
        if len(data) < MAC_LEN + NONCE_LEN:
            return 0, b""
        if not check_mac(self.token, self.nonce, b"c", bytes(data[:MAC_LEN])):
            raise AuthError("wrong cluster token")
        theirs = bytes(data[MAC_LEN : MAC_LEN + NONCE_LEN])
        self.done = True
        return MAC_LEN + NONCE_LEN, mac(self.token, theirs, b"s")


class ClientHandshake:
    """The client's side: answer the server's challenge, then check its answer."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.nonce = b""
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
            self.nonce = new_nonce()
            out = mac(self.token, bytes(data[:NONCE_LEN]), b"c") + self.nonce
            used = NONCE_LEN
        if not self.done and len(data) - used >= MAC_LEN:
            if not check_mac(self.token, self.nonce, b"s", bytes(data[used : used + MAC_LEN])):
                raise AuthError("server failed to prove the cluster token")
            self.done = True
            used += MAC_LEN
        return used, out
