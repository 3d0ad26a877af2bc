"""Slabs: many medium-sized objects in one shared-memory file.

A segment per object costs a reader an ``open``, ``fstat``, ``mmap`` and
``close`` per object, and the kernel a new mapping; for objects of a few
hundred KiB that is most of a ``get``.  Objects of up to ``MAX_SIZE``
bytes therefore live in slots of slab files instead: a reader
maps each slab once (``SlabReader``) and slices its objects out of that
mapping, zero-copy as before.

::

    size -> size class (page multiple, at most 1/16 above the size)
         -> a slab of that class with a free slot, or a new slab file
            (``<prefix>-slab<n>``, sparse: memory is used as slots are written)
    free -> the slot stays warm (pages kept, counted as used) for the next
            object of its class, up to a bound; beyond it, or when the store
            needs room (``trim``), its pages are given back
            (``FALLOC_FL_PUNCH_HOLE``); a slab with nothing left is unlinked

A location names a slot: ``<slab path>@<offset>+<size>``; a plain path is a
whole segment.  The store decides when a slot may be reused (no reader maps
its object); this module only hands slots out and takes them back.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skate._private.object_store import shm

PAGE = 4096
#: Objects up to this size go to slabs (above it each gets a segment, recycled warm).
MAX_SIZE = 1 << 20
#: Bytes of slots per slab file (rounded down to whole slots).
SLAB_BYTES = 32 << 20


def size_class(size: int) -> int:
    """The slot size for an object of ``size`` bytes: a page multiple at most
    1/16 larger (plus a page) than ``size``."""
    step = max(PAGE, (1 << max(size - 1, 1).bit_length()) // 16)
    return -(-size // step) * step


def location(path: str, offset: int, size: int) -> str:
    """The location of ``size`` bytes at ``offset`` of slab file ``path``."""
    return f"{path}@{offset}+{size}"


def parse(loc: str) -> tuple[str, int, int] | None:
    """``(slab path, offset, size)`` of a slot's location; None for a segment's plain path."""
    path, at, rest = loc.rpartition("@")
    if not at:
        return None
    offset, _, size = rest.partition("+")
    return path, int(offset), int(size)


@dataclass(eq=False)
class Slab:
    """One slab file: ``count`` slots of ``slot`` bytes."""

    path: str
    slot: int
    count: int
    cold: list[int] = field(default_factory=list)  # free slots with no memory
    warm: list[int] = field(default_factory=list)  # free slots whose pages are still there
    live: int = 0


class SlabAllocator:
    """Hands out and takes back slots of slab files named ``<prefix>-slab<n>``.

    A released slot stays warm (its pages kept, so the next object written
    into it costs no page allocation) while the warm slots add up to at most
    ``warm_limit`` bytes; ``trim`` gives them all back.  A slab with neither
    an object nor a warm slot is unlinked.
    """

    def __init__(self, prefix: str, warm_limit: int = 0) -> None:
        self.prefix = prefix
        self.warm_limit = warm_limit
        self.warm_bytes = 0
        self.by_class: dict[int, list[Slab]] = {}
        self._seq = 0
        self.closing = False  # the store is being cleared: slots are no longer punched

    @staticmethod
    def fits(size: int) -> bool:
        """True when an object of ``size`` bytes belongs in a slab."""
        return 0 < size <= MAX_SIZE

    def has_warm(self, size: int) -> bool:
        """True when a warm slot can take an object of ``size`` bytes."""
        return any(s.warm for s in self.by_class.get(size_class(size), ()))

    def alloc(self, size: int) -> tuple[Slab, int, bool]:
        """A free slot for ``size`` bytes: ``(slab, offset, warm)`` (its bytes:
        ``slab.slot``; ``warm``: its pages are there already)."""
        cls = size_class(size)
        slabs = self.by_class.setdefault(cls, [])
        for slab in slabs:
            if slab.warm:
                slab.live += 1
                self.warm_bytes -= cls
                return slab, slab.warm.pop(), True
        for slab in slabs:
            if slab.cold:
                break
        else:
            slab = self._new_slab(cls)
            slabs.append(slab)
        slab.live += 1
        return slab, slab.cold.pop(), False

    def _new_slab(self, cls: int) -> Slab:
        self._seq += 1
        count = max(SLAB_BYTES // cls, 1)
        path = f"{self.prefix}-slab{self._seq}"
        fd = shm.open_writable(path)
        try:
            os.ftruncate(fd, count * cls)  # sparse: no memory until written
        finally:
            os.close(fd)
        return Slab(path, cls, count, cold=[i * cls for i in range(count - 1, -1, -1)])

    def release(self, slab: Slab, offset: int, keep: bool = True) -> int:
        """Takes a slot back, warm when ``keep`` and the warm slots have room;
        returns how many bytes of memory that gave back (0 or the slot's)."""
        slab.live -= 1
        if keep and self.warm_bytes + slab.slot <= self.warm_limit:
            slab.warm.append(offset)
            self.warm_bytes += slab.slot
            return 0
        if slab.live == 0 and not slab.warm:
            self._unlink(slab)
        else:
            slab.cold.append(offset)
            if not self.closing:
                self._punch(slab, [offset])
        return slab.slot

    def trim(self) -> int:
        """Gives back the memory of every warm slot; returns how many bytes."""
        gone = self.warm_bytes
        for slabs in list(self.by_class.values()):
            for slab in list(slabs):
                if not slab.warm:
                    continue
                offsets, slab.warm = slab.warm, []
                if slab.live == 0:
                    self._unlink(slab)
                else:
                    slab.cold.extend(offsets)
                    self._punch(slab, offsets)
        self.warm_bytes = 0
        return gone

    def _unlink(self, slab: Slab) -> None:
        self.by_class[slab.slot].remove(slab)
        shm.unlink(slab.path)

    @staticmethod
    def _punch(slab: Slab, offsets: list[int]) -> None:
        try:
            fd = os.open(slab.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            for offset in offsets:
                _punch_hole(fd, offset, slab.slot)
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Unlinks every slab (the store is going away).  Nothing is punched:
        a process may still map values in them (a driver after ``shutdown()``),
        and their memory goes once the last mapping does."""
        self.closing = True
        for slabs in self.by_class.values():
            for slab in slabs:
                shm.unlink(slab.path)
        self.by_class.clear()
        self.warm_bytes = 0

    def stats(self) -> dict:
        """Slab files, the slots in use and the warm slots' bytes, for ``node_stats``."""
        slabs = [s for ss in self.by_class.values() for s in ss]
        return {"slabs": len(slabs), "slab_slots_used": sum(s.live for s in slabs), "slab_warm_bytes": self.warm_bytes}


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Gives the pages of ``offset..offset+length`` of a tmpfs file back (no-op where unsupported)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)


def write(loc: str, pieces: list) -> None:
    """Writes ``(offset, bytes)`` pieces into the slot at ``loc`` (offsets within the object).

    Raises:
        shm.ForeignSegmentError: when the slab file is not this user's own.
    """
    path, base, _size = parse(loc)  # type: ignore[misc]
    fd, _ = shm.open_verified(path, os.O_RDWR)
    try:
        shm.pwrite_pieces(fd, [(base + off, piece) for off, piece in pieces])
    finally:
        os.close(fd)


# --- readers -----------------------------------------------------------------------------------
class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]  # fmt: skip


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


class _Mapping:
    """One read-only mapping of a slab file, alive while any view into it is.

    Holds a buffer export of its ``mmap`` for its whole life, so the mapping
    cannot be closed under a view; the address the views start from is the
    export's.
    """

    __slots__ = ("mm", "fd", "addr", "size", "_buf", "__weakref__")

    def __init__(self, path: str) -> None:
        self.fd, size = shm.open_verified(path, os.O_RDONLY)  # kept: slots' heads are read with pread
        try:
            self.mm = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
            self.size = size
        except BaseException:
            os.close(self.fd)
            raise
        self._buf = _PyBuffer()
        _get_buffer(self.mm, ctypes.byref(self._buf), 0)
        self.addr: int = self._buf.buf
        # Closed by a finalizer, not __del__: weak references to a mapping are
        # cleared before finalizers run, so another thread's ``view`` can never
        # fetch a mapping that is being unmapped (its fd closed or reused).
        weakref.finalize(self, _close_mapping, self._buf, self.mm, self.fd)


def _close_mapping(buf: _PyBuffer, mm: mmap.mmap, fd: int) -> None:
    _release_buffer(ctypes.byref(buf))
    mm.close()
    os.close(fd)


def _slot_type(size: int) -> type:
    """A ctypes array type of ``size`` bytes whose instances, each the bytes of
    one slot, call ``release = (on_release, arg, mapping)`` when the last view
    of them is gone (a ``__del__``: a third of ``weakref.finalize``'s cost)."""

    class Slot(ctypes.c_char * size):  # type: ignore[misc, valid-type]
        __slots__ = ("release",)

        def __del__(self) -> None:
            release = getattr(self, "release", None)
            if release is not None:
                release[0](release[1])  # (release[2], the mapping, stayed alive until now)

    return Slot


class SlabReader:
    """A process's read-only views of slots: each slab is mapped once while any
    value read from it is alive, then unmapped."""

    def __init__(self) -> None:
        self._maps: dict[str, weakref.ref] = {}
        self._types: dict[int, type] = {}  # size class -> ctypes array type (a few dozen at most)

    def view(self, loc: str, on_release: Callable[[Any], None], arg: Any, head: int = 2048) -> tuple[memoryview, bytes]:
        """``(view, first bytes)`` of the slot at ``loc``: ``view`` is a
        read-only memoryview of its bytes (no copy); ``on_release(arg)`` runs
        once the last view derived from it is gone.  The slot's first ``head``
        bytes are read with ``pread``, so a reader that needs only its header
        and pickle data touches none of the mapping's pages (no page fault).

        Raises:
            FileNotFoundError: when the slab is gone (the object was freed).
            shm.ForeignSegmentError: when the slab file is not this user's own.
        """
        path, _, rest = loc.rpartition("@")
        offset, _, size = rest.partition("+")
        offset, size = int(offset), int(size)
        ref = self._maps.get(path)
        m = ref() if ref is not None else None
        if m is None:
            m = _Mapping(path)
            self._maps[path] = weakref.ref(m, self._forget(path))
        cls = size_class(size)  # (the slot's whole size: one type per class, not per object size)
        array = self._types.get(cls)
        if array is None:
            array = self._types[cls] = _slot_type(cls)
        if offset + cls > m.size:
            raise ValueError(f"slot {loc} lies outside its slab ({m.size} bytes)")
        owner = array.from_address(m.addr + offset)
        owner.release = (on_release, arg, m)  # (m: the mapping stays while views do)
        return memoryview(owner).cast("B")[:size].toreadonly(), os.pread(m.fd, min(head, size), offset)

    def _forget(self, path: str):  # noqa: ANN202
        def gone(ref: weakref.ref) -> None:
            if self._maps.get(path) is ref:
                del self._maps[path]

        return gone
