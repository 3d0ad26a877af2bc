"""Frames: the one wire format every skate connection speaks.

A frame is::

    <u32 header length><u64 payload length><msgpack header><payload buffers>

The header is ``[kind, request id, method, body, [buffer lengths]]``; the
payload buffers follow back to back, so large values (pickle protocol 5
out-of-band buffers) are written straight from their memory and never
re-encoded.  ``kind`` says whether the frame is a request, a reply, an error
reply or a one-way notification.

Data flow::

    sender:   encode(kind, rid, method, body, bufs) -> [prefix, header, *bufs] -> sendmsg
    receiver: recv_into(FrameReader.buffer()) -> FrameReader.frames() -> (kind, rid, method, body, bufs)

``FrameReader`` owns the receive buffer (it grows to fit the largest frame
and compacts what is left after each read); it knows nothing of sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgpack

REQUEST = 0
REPLY = 1
ERROR = 2
NOTIFY = 3

PREFIX = struct.Struct("<IQ")

_packb = msgpack.Packer(use_bin_type=True).pack


class ProtocolError(ValueError):
    """A peer sent a frame or message that does not follow the protocol."""


def encode(kind: int, rid: int, method: str | None, body: object, bufs: list | tuple = ()) -> list:
    """The frame for one message, as a list of byte-like pieces to write."""
    lens = [memoryview(b).nbytes for b in bufs] if bufs else []
    header = _packb([kind, rid, method, body, lens])
    out = [PREFIX.pack(len(header), sum(lens)), header]
    out.extend(bufs)
    return out


def decode_header(data: bytes | memoryview) -> tuple:
    """Decodes a frame header into ``(kind, rid, method, body, lens)``.

    Raises ``ProtocolError`` when it is not one.
    """
    try:
        header = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for bad input
        raise ProtocolError(f"undecodable frame header: {e}") from None
    if type(header) is not list or len(header) != 5:
        raise ProtocolError("a frame header must be a list of 5 items")
    kind, rid, method, _body, lens = header
    if type(kind) is not int or not REQUEST <= kind <= NOTIFY:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if type(rid) is not int or (method is not None and type(method) is not str) or type(lens) is not list:
        raise ProtocolError("malformed frame header fields")
    return header


class FrameReader:
    """The receive buffer of one connection, and the frames in it."""

    def __init__(self, size: int = 1 << 16) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self.n = 0  # bytes held

    def buffer(self) -> memoryview:
        """Free space to receive into (at least 64 KiB)."""
        if len(self._buf) - self.n < 65536:
            self._grow(len(self._buf) * 2)
        return self._view[self.n :]

    def received(self, nbytes: int) -> None:
        """``nbytes`` were written into the last ``buffer()``."""
        self.n += nbytes

    def held(self) -> memoryview:
        """The bytes received and not yet consumed."""
        return self._view[: self.n]

    def consume(self, nbytes: int) -> None:
        """Drops the first ``nbytes`` held (moves the rest to the front)."""
        if nbytes:
            rest = self.n - nbytes
            if rest:
                self._view[:rest] = self._view[nbytes : self.n]
            self.n = rest

    def _grow(self, size: int) -> None:
        new = bytearray(size)
        new[: self.n] = self._view[: self.n]
        self._view.release()
        self._buf = new
        self._view = memoryview(new)

    def frames(self) -> Iterator[tuple]:
        """Yields each complete frame as ``(kind, rid, method, body, bufs)``.

        What it yielded is consumed when the iteration ends (or is closed),
        in one move of the bytes left over.
        """
        prefix = PREFIX
        psize = prefix.size
        pos = 0
        try:
            while self.n - pos >= psize:
                view = self._view
                hlen, plen = prefix.unpack_from(view, pos)
                end = pos + psize + hlen + plen
                if end > self.n:
                    need = end - pos
                    if need > len(self._buf):
                        self.consume(pos)
                        pos = 0
                        self._grow(need + 65536)
                    return
                hstart = pos + psize
                kind, rid, method, body, lens = decode_header(view[hstart : hstart + hlen])
                if sum(lens) != plen:
                    raise ProtocolError("frame buffer lengths do not add up to its payload length")
                bufs = []
                off = hstart + hlen
                for ln in lens:
                    bufs.append(bytes(view[off : off + ln]))
                    off += ln
                pos = end
                yield kind, rid, method, body, bufs
        finally:
            self.consume(pos)
