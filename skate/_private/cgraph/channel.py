"""Channels of a compiled graph: one socket connection per (edge, reader).

An *edge* carries one node's value, once per execution, from the process
that makes it (the driver for the graph's input, else an actor) to every
other process that reads it.  Each reader has its own stream socket (a Unix
socket on one node; between nodes a TCP connection whose bytes travel in
the wire's encrypted records, see ``cgraph.secure``) carrying frames::

    <u8 kind><u64 body length> body
    VAL  <u32 n><u64 data length><u64 buffer length>*n  pickle data, buffers
    SHM  <u32 slot><u64 bytes>      the value is laid out in a shared slot
    ERR  pickled exception          the node failed (or an upstream one did)

Values of ``SHM_MIN_BYTES`` or more, read on the writer's node, are written
once into a slot of the edge's shared-memory segment (pickle protocol 5,
buffers 64-byte aligned, see ``serialization.write_layout``) and read in
place; only a 21-byte frame goes through each socket.  Slots are used
round-robin, one per in-flight execution: the driver never has more than
``max_inflight`` executions in flight, and reading an execution's results
means every node finished with that execution's inputs, so a slot is never
rewritten while read.  Readers in actors get zero-copy views, valid until
the slot comes round again (like Ray's channels); the driver copies.

Values that do not fit a slot (or whose reader is on another node) go
through the socket itself.  A writer blocked on a full socket keeps reading
its own process's inbound channels meanwhile (``send_all``'s pump), so two
processes writing large values to each other cannot block each other.

The socket also wakes the reader (no polling of shared memory) and tells it
at once when the writer's process dies (end of stream).  A reader polls
for ``Config.spin_us`` before it sleeps in ``poll``, as skate's execution
loops do: the next value usually comes within microseconds (and while it
does not, on a busy machine, the reader sleeps at once).
"""

from __future__ import annotations

import collections
import mmap
import os
import pickle
import select
import socket
import struct
import time
from typing import Any

from skate._private import serialization
from skate._private.cgraph.waiting import Inbound, remaining, wait_for
from skate._private.config import CONFIG

VAL, SHM, ERR = 1, 2, 3
HDR = struct.Struct("<BQ")
_NBUF = struct.Struct("<I")
_LEN = struct.Struct("<Q")
_SLOT = struct.Struct("<IQ")
_SMALL = struct.Struct("<BQIQ")  # a VAL frame's header with no out-of-band buffer
SHM_MIN_BYTES = 16 * 1024
_RECV = 65536
_SCALARS = (int, float, str, bytes, bool, type(None))
_NOTHING = object()


class ChannelClosed(Exception):
    """The other end of a channel went away (its process died or the graph was torn down)."""


class ChannelTimeout(Exception):
    """A read or write did not finish in time; ``partial`` says a frame was cut in the middle."""

    def __init__(self, partial: bool = False) -> None:
        super().__init__("timed out")
        self.partial = partial


class ErrorValue:
    """A node's failure travelling in place of its value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def spin_seconds() -> float:
    """How long a reader polls before it sleeps."""
    return CONFIG.spin_us / 1e6


# --- shared memory -------------------------------------------------------------------
def shm_create(name: str, size: int) -> None:
    """Creates the segment file ``/dev/shm/<name>`` of ``size`` bytes (sparse until written)."""
    fd = os.open(os.path.join("/dev/shm", name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def shm_map(name: str, writable: bool) -> mmap.mmap:
    """Maps an existing segment (readers map it read-only: their values are read-only views)."""
    fd = os.open(os.path.join("/dev/shm", name), os.O_RDWR if writable else os.O_RDONLY)
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, prot)
    finally:
        os.close(fd)


def shm_unlink(name: str) -> None:
    """Removes a segment's name (mappings stay valid); a missing one is not an error."""
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass


# --- sending -------------------------------------------------------------------------
def send_all(sock: socket.socket, chunks: list, deadline: float | None, pump: Inbound | None = None) -> None:
    """Sends ``chunks`` on a non-blocking socket, waiting for room until ``deadline``.

    While it waits, ``pump`` (this process's inbound channels, if given)
    is kept read, so that two processes writing to each other, each blocked
    on a full socket, cannot wait forever.

    Raises:
        ChannelClosed: when the reader is gone.
        ChannelTimeout: when the deadline passed (``partial`` if some bytes went).
    """
    total = sum(len(c) if isinstance(c, (bytes, bytearray)) else memoryview(c).nbytes for c in chunks)
    sent = 0
    while True:
        try:
            n = sock.sendmsg(chunks)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ChannelClosed(str(e)) from None
        sent += n
        if sent >= total:
            return
        if n:
            chunks = _advance(chunks, n)
        left = remaining(deadline)
        if left is not None and left <= 0:
            raise ChannelTimeout(partial=sent > 0)
        wait_for(sock.fileno(), select.POLLOUT, deadline, pump)


def _advance(chunks: list, n: int) -> list:
    out = []
    for c in chunks:
        mv = memoryview(c).cast("B")
        if n >= mv.nbytes:
            n -= mv.nbytes
            continue
        out.append(mv[n:] if n else mv)
        n = 0
    return out


class Writer:
    """Writes one value per execution to every reader of an edge.

    Args:
        socks: One connected non-blocking socket per reader.
        local: Per reader, whether it can map the edge's segment (same node).
        shm: The edge's segment, mapped, or None.
        slot_size: Bytes per slot.
        nslots: Slots in the segment.
        tensor_device: With a tensor transport hint, where torch tensors go
            (``skate._private.cgraph.tensors``); None: plain pickling.
        p2p: For ``transport="nccl"``: ``(group, reader ranks, tag, backend)``;
            tensors then go by send/recv, not through the channel.
    """

    def __init__(self, socks: list, local: list, shm: mmap.mmap | None, slot_size: int, nslots: int,
                 tensor_device: str | None = None, p2p: tuple | None = None) -> None:
        self.socks = socks
        self.tensor_device = tensor_device
        self.p2p = p2p
        self.local = local
        self.shm = shm
        self.mem = memoryview(shm) if shm is not None else None
        self.slot_size = slot_size
        self.nslots = nslots
        self.next_slot = 0  # slots go round-robin, one per value that uses one
        #: Per reader: the ``send_sealed`` of a channel to another node (``cgraph.secure``), else None.
        self.sealed = [getattr(s, "send_sealed", None) for s in socks]
        self.single = socks[0] if len(socks) == 1 and self.sealed[0] is None else None
        #: This process's inbound channels, kept read while a send waits (see ``Inbound``).
        self.pump: Inbound | None = None

    def write(self, value: Any, deadline: float | None = None) -> None:
        """Sends ``value`` (an ``ErrorValue`` travels as an error).

        Raises:
            ChannelClosed, ChannelTimeout: see ``send_all``.
            SerializationError: when ``value`` cannot be pickled.
        """
        sock = self.single
        if sock is not None and type(value) in _SCALARS:  # the common case, in one system call
            data = pickle.dumps(value, 5)
            if len(data) < SHM_MIN_BYTES:
                frame = _SMALL.pack(VAL, 12 + len(data), 0, len(data)) + data
                try:
                    n = sock.send(frame)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    raise ChannelClosed(str(e)) from None
                if n != len(frame):
                    try:
                        send_all(sock, [memoryview(frame)[n:]], deadline, self.pump)
                    except ChannelTimeout as e:
                        raise ChannelTimeout(partial=e.partial or n > 0) from None
                return
        if type(value) is ErrorValue:
            body = pickle.dumps(value.error, 5)
            frame = [HDR.pack(ERR, len(body)), body]
            self._send([frame] * len(self.socks), deadline)
            return
        sent_aside: list = []
        if type(value) in _SCALARS:
            data, bufs = pickle.dumps(value, 5), []
        elif self.p2p is not None:
            from skate._private.cgraph import tensors

            try:
                data, sent_aside = tensors.dumps_p2p(value)
            except Exception as e:
                raise serialization.SerializationError(f"Could not serialize a compiled graph value: {e}") from e
            bufs = []
        elif self.tensor_device is not None:
            from skate._private.cgraph import tensors

            try:
                data, bufs = tensors.dumps(value, self.tensor_device)
            except Exception as e:
                raise serialization.SerializationError(f"Could not serialize a compiled graph value: {e}") from e
        else:
            data, bufs, _ = serialization.dumps(value, "a compiled graph value")
        size = len(data) + sum(b.nbytes for b in bufs)
        shm_frame = None
        if self.mem is not None and size >= SHM_MIN_BYTES and serialization.layout_size(data, bufs) <= self.slot_size:
            slot = self.next_slot
            self.next_slot = (slot + 1) % self.nslots
            off = slot * self.slot_size
            need = serialization.layout_size(data, bufs)
            serialization.write_layout(self.mem[off : off + need], data, bufs)
            body = _SLOT.pack(slot, need)
            shm_frame = [HDR.pack(SHM, len(body)), body]
        inline = None
        frames = []
        for local in self.local:
            if shm_frame is not None and local:
                frames.append(shm_frame)
                continue
            if inline is None:
                if bufs:
                    head = _NBUF.pack(len(bufs)) + _LEN.pack(len(data)) + b"".join(_LEN.pack(b.nbytes) for b in bufs)
                    n = len(head) + size
                    inline = [HDR.pack(VAL, n), head, data, *bufs]
                else:
                    head = _NBUF.pack(0) + _LEN.pack(len(data))
                    inline = [HDR.pack(VAL, len(head) + len(data)) + head + data]
            frames.append(inline)
        self._send(frames, deadline)
        if sent_aside:
            from skate._private.cgraph import tensors

            tensors.send_tensors(self.p2p, sent_aside)

    def _send(self, frames: list, deadline: float | None) -> None:
        """Sends each reader its frame; one gone reader does not keep the others from theirs.

        Raises:
            ChannelClosed: after the others were served, when a reader is gone.
            ChannelTimeout: ``partial`` when any reader got any byte of this value.
        """
        closed = None
        for i, (s, frame) in enumerate(zip(self.socks, frames, strict=True)):
            try:
                seal = self.sealed[i]
                if seal is None:
                    send_all(s, frame, deadline, self.pump)
                else:
                    seal(frame, deadline, self.pump)
            except ChannelClosed as e:
                closed = e
            except ChannelTimeout as e:
                raise ChannelTimeout(partial=e.partial or i > 0) from None
        if closed is not None:
            raise closed

    def close(self) -> None:
        for s in self.socks:
            _close(s)
        self.socks = []
        _unmap(self)


class Reader:
    """Reads the values one writer sends to this process on one edge.

    Args:
        sock: The connected non-blocking socket.
        shm: The edge's segment, mapped, when the writer is on this node.
        copy: Copy values out of shared memory (the driver, whose results
            may be kept for as long as the user likes).
    """

    def __init__(self, sock: socket.socket, shm: mmap.mmap | None, slot_size: int, copy: bool) -> None:
        self.sock = sock
        self.shm = shm
        self.mem = memoryview(shm) if shm is not None else None
        self.slot_size = slot_size
        self.copy = copy
        self.p2p: tuple | None = None  # (group, writer rank, tag, backend, device) for transport="nccl"
        self.buf: bytes | bytearray = b""
        self.pos = 0
        self.big = False  # filling one large frame in place
        self.fill = 0
        self.frames: collections.deque = collections.deque()  # whole frames read ahead by drain()
        self.eof = False  # drain() met the end of the stream
        self.spin = spin_seconds()
        self.spinning = bool(self.spin)
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        #: This process's inbound channels, kept read while a read waits (see ``Inbound``).
        self.pump: Inbound | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, deadline: float | None = None) -> Any:
        """The next value (an ``ErrorValue`` for a failed node), waiting until ``deadline``.

        Raises:
            ChannelClosed: when the writer went away.
            ChannelTimeout: when nothing came in time (nothing is lost: read again).
        """
        if self.frames:
            return self._decode(*self.frames.popleft())
        if self.eof:
            raise ChannelClosed("end of stream")
        if self.pos == len(self.buf) and not self.big and self.p2p is None:
            # Nothing buffered: wait for data; most often it is exactly one small frame.
            self._fill(deadline)
            data = self.buf
            if len(data) >= 21 and self.pos == 0:
                kind, n, nbufs, dlen = _SMALL.unpack_from(data, 0)
                if kind == VAL and nbufs == 0 and n + 9 == len(data):
                    self.buf = b""
                    return pickle.loads(memoryview(data)[21:])
        while True:
            frame = self._frame()
            if frame is not None:
                return self._decode(*frame)
            self._fill(deadline)

    def try_read(self) -> Any:
        """The next value if a whole frame is already here, else ``_NOTHING`` (never blocks)."""
        if self.frames:
            return self._decode(*self.frames.popleft())
        if self.eof:
            raise ChannelClosed("end of stream")
        while True:
            frame = self._frame()
            if frame is not None:
                return self._decode(*frame)
            if not self._recv_once():
                return _NOTHING

    def drain(self) -> None:
        """Reads whatever has arrived into whole frames, for ``read`` later (never blocks)."""
        if self.eof:
            return
        try:
            while True:
                frame = self._frame()
                if frame is not None:
                    if self.p2p is not None:
                        # Its tensors' sends wait until this process receives
                        # them: receive them now (they follow the frame at once).
                        frame = (None, self._decode(*frame))
                    self.frames.append(frame)
                elif not self._recv_once():
                    return
        except ChannelClosed:
            self.eof = True

    def _frame(self) -> tuple | None:
        if self.big:  # a large frame still filling in place
            return None
        buf, pos = self.buf, self.pos
        avail = len(buf) - pos
        if avail < 9:
            return None
        kind, n = HDR.unpack_from(buf, pos)
        if avail < 9 + n:
            if n > 4 * _RECV and not self.big:
                self._grow(n)
            return None
        body = memoryview(buf)[pos + 9 : pos + 9 + n]
        self.pos = pos + 9 + n
        if self.pos == len(buf):
            self.buf, self.pos = b"", 0
        return kind, body

    def _grow(self, n: int) -> None:
        """Makes room for a large frame at once (instead of joining many pieces)."""
        old = memoryview(self.buf)[self.pos :]
        big = bytearray(9 + n)
        big[: old.nbytes] = old
        self.buf, self.pos, self.fill, self.big = big, 0, old.nbytes, True

    def _recv_once(self) -> bool:
        """Reads what is there without blocking; False if nothing was."""
        buf = self.buf
        try:
            if self.big:
                got = self.sock.recv_into(memoryview(buf)[self.fill :])
                if got == 0:
                    raise ChannelClosed("end of stream")
                self.fill += got
                self.big = self.fill < len(buf)
                return True
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return False
        except (ConnectionResetError, OSError) as e:
            raise ChannelClosed(str(e)) from None
        if not data:
            raise ChannelClosed("end of stream")
        if self.pos == len(buf):
            self.buf, self.pos = data, 0
        else:
            self.buf, self.pos = bytes(memoryview(buf)[self.pos :]) + data, 0
        return True

    def _fill(self, deadline: float | None) -> None:
        if self.big:
            return self._fill_big(deadline)
        if self._recv_once():
            return None
        # Poll before sleeping only while that pays: when the last value came
        # within the polling time.  On a busy machine values come late, and a
        # process that polls only delays the ones it waits for.
        start = time.perf_counter()
        if self.spinning:
            end = start + self.spin
            yield_, poll = os.sched_yield, self.poller.poll
            while time.perf_counter() < end:
                yield_()
                if poll(0) and self._recv_once():
                    return None
        while True:
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise ChannelTimeout()
            self._sleep(deadline)
            if self._recv_once():
                self.spinning = bool(self.spin) and time.perf_counter() - start < self.spin
                return None

    def _fill_big(self, deadline: float | None) -> None:
        while self.big:
            if self._recv_once():
                continue
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise ChannelTimeout()
            self._sleep(deadline)

    def _sleep(self, deadline: float | None) -> None:
        """Sleeps until data comes or ``deadline``, keeping the other inbound channels read."""
        pump = self.pump
        if pump is None:
            left = remaining(deadline)
            self.poller.poll(None if left is None else max(int(left * 1000), 1))
        else:
            pump.wait(self.sock.fileno(), select.POLLIN, deadline, skip=self)

    def _decode(self, kind: int | None, body: Any) -> Any:
        if kind is None:  # decoded ahead by drain()
            return body
        try:
            return self._decode_value(kind, body)
        except ChannelClosed:
            raise
        except Exception as e:  # noqa: BLE001 - a value this process cannot rebuild fails its execution only
            import traceback

            from skate import exceptions as exc

            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            return ErrorValue(exc.RayTaskError("reading a compiled graph value", tb, e))

    def _decode_value(self, kind: int, body: memoryview) -> Any:
        if kind == VAL:
            (n,) = _NBUF.unpack_from(body, 0)
            lens = [_LEN.unpack_from(body, 4 + 8 * i)[0] for i in range(n + 1)]
            pos = 4 + 8 * (n + 1)
            data = body[pos : pos + lens[0]]
            pos += lens[0]
            bufs = []
            for ln in lens[1:]:
                bufs.append(body[pos : pos + ln])
                pos += ln
            return self._loads(data, bufs)
        if kind == SHM:
            slot, nbytes = _SLOT.unpack_from(body, 0)
            off = slot * self.slot_size
            mem = self.mem[off : off + nbytes]
            if self.copy:
                mem = memoryview(bytes(mem))
            data, bufs = serialization.read_layout(mem)
            return self._loads(data, bufs)
        if kind == ERR:
            return ErrorValue(pickle.loads(body))
        raise ChannelClosed(f"unknown frame kind {kind}")

    def _loads(self, data: Any, bufs: list) -> Any:
        if self.p2p is not None:
            from skate._private.cgraph import tensors

            return tensors.loads_p2p(data, self.p2p)
        return pickle.loads(data, buffers=bufs)

    def close(self) -> None:
        _close(self.sock)
        _unmap(self)


def _unmap(end: Any) -> None:
    mem, shm = end.mem, end.shm
    end.mem = end.shm = None
    try:
        if mem is not None:
            mem.release()
        if shm is not None:
            shm.close()
    except BufferError:  # a zero-copy value still points into it: unmapped when that goes
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def nothing() -> Any:
    """The marker ``Reader.try_read`` returns when no whole frame is there yet."""
    return _NOTHING
