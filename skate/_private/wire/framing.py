"""Frames: the one wire format every skate connection speaks.

A frame is::

    <u32 header length><u64 payload length><msgpack header><payload buffers>

The header is ``[kind, request id, method, body, [buffer lengths]]`` in
msgpack; the
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

import numbers
import struct
from typing import Annotated, Any, Literal, Union

import msgspec

REQUEST = 0
REPLY = 1
ERROR = 2
NOTIFY = 3

PREFIX = struct.Struct("<IQ")
#: The largest frame header accepted (a header lists one length per buffer).
MAX_HEADER_BYTES = 64 << 20



def _enc_hook(obj: Any) -> Any:
    # Numbers and bytes of other types (numpy scalars, bytes subclasses) as plain ones.
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} cannot be sent in a message")


_packb = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
#: kind (one of the four), request id, method, body (left encoded), buffer lengths.
_header = msgspec.msgpack.Decoder(
    tuple[Literal[0, 1, 2, 3], int, Union[str, None], msgspec.Raw, list[Annotated[int, msgspec.Meta(ge=0)]]]
)


class ProtocolError(ValueError):
    """A peer sent a frame or message that does not follow the protocol."""


def encode(kind: int, rid: int, method: str | None, body: object, bufs: list | tuple = ()) -> list:
    """The frame for one message, as a list of byte-like pieces to write."""
    return encode_sized(kind, rid, method, body, bufs)[0]


def encode_sized(kind: int, rid: int, method: str | None, body: object, bufs: list | tuple = ()) -> tuple[list, int]:
    """``encode``, and the frame's length in bytes."""
    if bufs:
        lens = [memoryview(b).nbytes for b in bufs]
        plen = sum(lens)
        header = _packb([kind, rid, method, body, lens])
        out = [PREFIX.pack(len(header), plen), header]
        out.extend(bufs)
        return out, PREFIX.size + len(header) + plen
    header = _packb([kind, rid, method, body, ()])
    return [PREFIX.pack(len(header), 0), header], PREFIX.size + len(header)


def decode_header(data: bytes | memoryview) -> tuple:
    """Decodes a frame header into ``(kind, rid, method, raw body, lens)``.

    The body stays encoded (``msgspec.Raw``, a view of ``data``): it is
    decoded, and validated, with the type its method declares (see
    ``skate._private.messages``) before ``data`` changes.  Raises
    ``ProtocolError`` when ``data`` is not a frame header.
    """
    try:
        return _header.decode(data)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed frame header: {e}") from None


class FrameReader:
    """The receive buffer of one connection, and the frames in it."""

    def __init__(self, size: int = 1 << 16, max_payload: int = 1 << 62) -> None:
        """``max_payload``: the largest payload of one frame accepted, in bytes."""
        self.max_payload = max_payload
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self.n = 0  # bytes held
        self._taken = 0  # bytes of the frames last returned by frames()

    def buffer(self) -> memoryview:
        """Free space to receive into (at least 64 KiB)."""
        return self.space(65536)

    def space(self, nbytes: int) -> memoryview:
        """Free space of at least ``nbytes`` to write received bytes into."""
        if len(self._buf) - self.n < nbytes:
            self._grow(max(len(self._buf) * 2, self.n + nbytes))
        return self._view[self.n :]

    def received(self, nbytes: int) -> None:
        """``nbytes`` were written into the last ``buffer()``."""
        self.n += nbytes

    def recv_from(self, sock: Any) -> int:
        """``buffer()``, ``sock.recv_into`` it and ``received()`` in one step
        (the read path of every message); returns the bytes received, 0 at EOF.

        Raises what ``recv_into`` raises (``BlockingIOError`` when there is nothing).
        """
        n = self.n
        if len(self._buf) - n < 65536:
            self._grow(max(len(self._buf) * 2, n + 65536))
        got = sock.recv_into(self._view[n:])
        self.n = n + got
        return got

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

    def frames(self) -> list[tuple]:
        """Each complete frame held, as ``(kind, rid, method, body, bufs)``.

        ``body`` is a view of this buffer: decode it, then call ``release()``
        to drop the frames returned (one move of the bytes left over), before
        the next ``frames()``.  Raises ``ProtocolError`` on a frame over the
        limits or one that does not add up.
        """
        prefix = PREFIX
        psize = prefix.size
        n = self.n
        view = self._view
        header_decode = _header.decode  # (decode_header, inlined: once per frame)
        out = []
        pos = 0
        while n - pos >= psize:
            hlen, plen = prefix.unpack_from(view, pos)
            if hlen > MAX_HEADER_BYTES or plen > self.max_payload:
                raise ProtocolError(
                    f"a frame of {hlen} header and {plen} payload bytes is over the limit "
                    f"({MAX_HEADER_BYTES} and {self.max_payload}; SKATE_MAX_FRAME_BYTES)"
                )
            end = pos + psize + hlen + plen
            if end > n:
                need = end - pos
                if need > len(self._buf) and not out:  # make room for all of it at once
                    self.consume(pos)
                    pos = 0
                    self._grow(need + 65536)
                break
            hstart = pos + psize
            try:
                kind, rid, method, body, lens = header_decode(view[hstart : hstart + hlen])
            except msgspec.DecodeError as e:
                raise ProtocolError(f"malformed frame header: {e}") from None
            if lens:
                off = hstart + hlen
                if len(lens) == 1:  # (most frames that carry buffers carry one)
                    if lens[0] != plen:
                        raise ProtocolError("frame buffer lengths do not add up to its payload length")
                    lens = [bytes(view[off:end])]
                else:
                    if sum(lens) != plen:
                        raise ProtocolError("frame buffer lengths do not add up to its payload length")
                    bufs = []
                    for ln in lens:
                        bufs.append(bytes(view[off : off + ln]))
                        off += ln
                    lens = bufs
            elif plen:
                raise ProtocolError("frame buffer lengths do not add up to its payload length")
            out.append((kind, rid, method, body, lens))
            pos = end
        self._taken = pos
        return out

    def release(self) -> None:
        """Drops the frames the last ``frames()`` returned."""
        taken = self._taken
        if taken == self.n:  # (all of it, as usual: nothing to move)
            self.n = 0
        elif taken:
            self.consume(taken)
        self._taken = 0
