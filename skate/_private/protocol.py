"""The one wire format every skate connection speaks.

A frame is::

    <u32 header length><u64 payload length><msgpack header><payload buffers>

The header is ``[kind, request id, method, body, [buffer lengths]]``; the
payload buffers follow back to back, so large values (pickle protocol 5
out-of-band buffers) are written straight from their memory and never
re-encoded.  ``kind`` says whether the frame is a request, a reply, an error
reply or a one-way notification.

Before any frame, both ends prove they hold the cluster token (an HMAC
challenge in each direction); nothing is decoded from a peer that has not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import msgpack

REQUEST = 0
REPLY = 1
ERROR = 2
NOTIFY = 3

PREFIX = struct.Struct("<IQ")
NONCE_LEN = 32
MAC_LEN = 32

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(kind: int, rid: int, method: str | None, body: object, bufs: list | tuple = ()) -> list:
    """The frame for one message, as a list of byte-like pieces to write."""
    lens = [memoryview(b).nbytes for b in bufs] if bufs else []
    header = _packb([kind, rid, method, body, lens])
    out = [PREFIX.pack(len(header), sum(lens)), header]
    out.extend(bufs)
    return out


def decode_header(data: bytes | memoryview) -> tuple:
    """Decodes a frame header into ``(kind, rid, method, body, lens)``."""
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


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


class AuthError(ConnectionError):
    """The peer did not prove it holds the cluster token."""
