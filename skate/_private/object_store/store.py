"""A node's shared-memory store: space accounting, eviction and spilling.

The node daemon owns one ``ObjectStore``.  Producers ask it to ``reserve``
space (it frees room first, by dropping secondary copies and spilling primary
copies to disk, least recently used first), write the segment themselves and
``seal`` it.  ``ensure_local`` brings a spilled object back.  The owner of an
object decides when it dies and calls ``free``.

An object larger than the whole store, or one that no spilling can make
room for (readers map what is there), is not refused: it gets a
disk-backed segment, a file in the spill folder that producers and
readers map like any segment (``StoredObject.disk``).  It never counts in
``used``, is never spilled, and its file goes when the object is freed.
Its blocks are allocated up front (``posix_fallocate``), so a full disk
is an ``StoreFull`` at reservation rather than a crash while it is written.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from skate._private.object_store import shm, slab


class StoreFull(Exception):
    """No room can be made for an object."""


@dataclass
class StoredObject:
    """One object held by the store (in shared memory or spilled)."""

    size: int
    path: str
    primary: bool
    sealed: bool = False
    spilled_path: str | None = None
    created: float = field(default_factory=time.monotonic)
    spilling: bool = False  # being copied to disk (its bytes already left ``used``)
    freed: bool = False  # freed while being spilled: the copy is thrown away
    disk: bool = False  # a disk-backed segment (larger than the store): not in ``used``
    slab: slab.Slab | None = None  # in a slot of this slab (at ``offset``) rather than a segment
    offset: int = 0
    held: int = 0  # bytes it counts in ``used`` while in memory (its slot's, or ``size``)

    def __post_init__(self) -> None:
        self.held = self.held or self.size

    @property
    def location(self) -> str:
        """Where readers find it: its segment's path, or its slot's location."""
        return slab.location(self.path, self.offset, self.size) if self.slab is not None else self.path


class ObjectStore:
    """Accounting for one node's segments."""

    def __init__(self, prefix: str, capacity: int, spill_dir: str) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self.spill_dir = spill_dir
        self.used = 0
        self.objects: OrderedDict[bytes, StoredObject] = OrderedDict()
        self.spilled_bytes_total = 0
        self.restored_bytes_total = 0
        self.disk_bytes = 0  # held by disk-backed segments now
        #: Freed segments kept for reuse: their pages are already in memory, so
        #: writing a new object into one runs at memcpy speed instead of
        #: paying a page fault per 4 KiB.  They count as used until dropped.
        self.pool: list[tuple[int, str]] = []
        self.pool_bytes = 0
        #: How many readers map each object (they may hold views into it).
        self.mapped: dict[bytes, int] = {}
        #: Freed objects whose segments readers still map (released on the last unmap).
        self.zombies: dict[bytes, StoredObject] = {}
        self._pool_seq = 0
        #: Slots for objects of up to ``slab.MAX_SIZE`` bytes (``reserve(slot=True)``);
        #: freed slots stay warm (counted as used) up to an eighth of the store.
        self.slabs = slab.SlabAllocator(os.path.join(shm.SHM_DIR or "/tmp", prefix), warm_limit=capacity // 8)

    def needs_room(self, size: int, slot: bool = False) -> bool:
        """True when reserving ``size`` bytes in memory (in a slot, when ``slot``
        and it fits one) means freeing room first (an object larger than the
        whole store goes to disk instead)."""
        if slot and self.slabs.fits(size):
            if self.slabs.has_warm(size):
                return False  # a warm slot takes it: counted already
            size = slab.size_class(size)
        return size <= self.capacity and self.used + size > self.capacity

    def _make_room(self, size: int, oid: bytes) -> None:
        victims = self.plan_room(size, oid)
        if victims:
            self.finish_spill(victims, spill_files(self.spill_dir, victims))

    def plan_room(self, size: int, oid: bytes) -> list[tuple[bytes, StoredObject]]:
        """Makes room for ``size`` bytes in the accounts; returns the primaries to spill.

        Secondary copies and recycled segments are dropped at once; the
        primaries returned are marked ``spilling`` and their bytes no longer
        count as used: the caller copies them to disk (``spill_files``, on
        any thread) and then calls ``finish_spill``.  Raises ``StoreFull``.
        """
        if size > self.capacity:
            raise StoreFull(
                f"object of {size} bytes is larger than the object store "
                f"({self.capacity} bytes); start skate with a larger object_store_memory"
            )
        victims: list[tuple[bytes, StoredObject]] = []
        if self.used + size <= self.capacity:
            return victims
        while self.pool and self.used + size > self.capacity:
            psize, path = self.pool.pop(0)
            shm.unlink(path)
            self.pool_bytes -= psize
            self.used -= psize
        if self.used + size > self.capacity and self.slabs.warm_bytes:
            self.used -= self.slabs.trim()
        if self.used + size <= self.capacity:
            return victims
        # Secondary copies first (they can be fetched again), then spill primaries.
        for want_primary in (False, True):
            for key, obj in list(self.objects.items()):
                if self.used + size <= self.capacity:
                    return victims
                if (key == oid or not obj.sealed or obj.spilled_path or obj.spilling or obj.disk
                        or obj.primary != want_primary or self.mapped.get(key)):
                    # (A mapped object's memory stays while readers map it, and a reader
                    # told its path may be about to map it: it is not dropped or spilled.)
                    continue
                if want_primary:
                    obj.spilling = True
                    self.used -= obj.held
                    victims.append((key, obj))
                else:
                    self._drop(key, obj)
        if self.used + size > self.capacity:
            for _key, obj in victims:  # nothing gained: keep them in memory
                obj.spilling = False
                self.used += obj.held
            raise StoreFull(
                f"object store is full: {self.used} of {self.capacity} bytes in use by objects "
                f"being written, read (mapped by readers) or spilled; cannot fit {size} bytes"
            )
        return victims

    def finish_spill(self, victims: list[tuple[bytes, StoredObject]], dests: list[str]) -> None:
        """Completes ``plan_room``'s spills once ``spill_files`` copied them to ``dests``."""
        for (oid, obj), dest in zip(victims, dests, strict=True):
            obj.spilling = False
            if self.mapped.get(oid):
                # A reader was told its location while it was copied: the object
                # stays in memory (released once unmapped, should it be freed).
                _remove(dest)
                self.used += obj.held
                if obj.freed:
                    self.zombies[oid] = obj
                continue
            if obj.freed:  # freed meanwhile: the copy is not needed
                _remove(dest)
                self.drop_memory(obj)
                continue
            if obj.slab is not None:  # restored (if ever) into a segment of its own
                self.drop_memory(obj)
                obj.path = shm.segment_path(self.prefix, oid)
            else:
                shm.unlink(obj.path)
            obj.spilled_path = dest
            self.spilled_bytes_total += obj.size

    def _drop(self, oid: bytes, obj: StoredObject) -> None:
        self.used -= obj.held
        self.drop_memory(obj)
        del self.objects[oid]

    def drop_memory(self, obj: StoredObject, keep: bool = False) -> int:
        """Gives an object's memory back: its segment unlinked, or its slot
        released (warm, if ``keep`` and the warm slots have room: its bytes
        then stay in ``used``).  The object then counts ``size`` bytes, as a
        segment would.  Returns the bytes of memory given back."""
        if obj.slab is None:
            shm.unlink(obj.path)
            return obj.size
        gone = self.slabs.release(obj.slab, obj.offset, keep)
        obj.slab, obj.offset, obj.held = None, 0, obj.size
        return gone

    def reserve(self, oid: bytes, size: int, primary: bool = True, disk: bool = False, slot: bool = False) -> str:
        """Makes room for ``size`` bytes and returns where to write them: a
        segment path to create, or (``slot``: the writer takes slots, and the
        object is small enough) a slot's location (``slab.location``).

        ``disk``: a disk-backed segment even though the object would fit (no
        room can be made in memory now).  Raises ``StoreFull``.
        """
        if oid in self.objects:
            return self.objects[oid].location
        if size > self.capacity or disk:
            return self._reserve_on_disk(oid, size, primary)
        if slot and self.slabs.fits(size):
            held = slab.size_class(size)
            if not self.slabs.has_warm(size):
                self._make_room(held, oid)
            where, offset, warm = self.slabs.alloc(size)
            if not warm:  # (a warm slot's bytes are in ``used`` already)
                self.used += held
            obj = self.objects[oid] = StoredObject(size, where.path, primary, slab=where, offset=offset, held=held)
            return obj.location
        path = shm.segment_path(self.prefix, oid)
        recycled = self._take_from_pool(size, path)
        if not recycled:
            self._make_room(size, oid)
            self.used += size
        self.objects[oid] = StoredObject(size, path, primary)
        return path

    def _reserve_on_disk(self, oid: bytes, size: int, primary: bool) -> str:
        """A disk-backed segment for an object larger than the store, its blocks allocated."""
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, f"{oid.hex()}.seg")
        fd = shm.open_writable(path)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            os.close(fd)
            shm.unlink(path)
            raise StoreFull(
                f"object of {size} bytes does not fit in the object store ({self.capacity} bytes) and "
                f"no disk-backed segment could be made for it in {self.spill_dir}: {e}"
            ) from None
        os.close(fd)
        self.objects[oid] = StoredObject(size, path, primary, disk=True)
        self.disk_bytes += size
        return path

    def _take_from_pool(self, size: int, path: str) -> bool:
        best = None
        for i, (psize, _path) in enumerate(self.pool):
            if size <= psize and (best is None or psize < self.pool[best][0]):
                best = i
        if best is None:
            return False
        psize, ppath = self.pool.pop(best)
        self.pool_bytes -= psize
        try:
            os.rename(ppath, path)
            os.truncate(path, size)
        except OSError:
            shm.unlink(ppath)
            self.used -= psize
            return False
        self.used -= psize - size
        return True

    def seal(self, oid: bytes) -> None:
        """Marks an object complete and readable."""
        obj = self.objects.get(oid)
        if obj is not None:
            obj.sealed = True

    def contains(self, oid: bytes) -> bool:
        """True when the object is sealed here (in memory or spilled)."""
        obj = self.objects.get(oid)
        return obj is not None and obj.sealed

    def ensure_local(self, oid: bytes) -> str | None:
        """The location of a sealed object (``StoredObject.location``), restoring it from disk if spilled."""
        obj = self.objects.get(oid)
        if obj is None or not obj.sealed:
            return None
        self.objects.move_to_end(oid)
        if obj.spilled_path:
            self._make_room(obj.size, oid)
            self.used += obj.size
            shm.copy_in(obj.spilled_path, obj.path)
            self.finish_restore(oid, obj)
        return obj.location

    def finish_restore(self, oid: bytes, obj: StoredObject) -> None:
        """The spilled copy of ``obj`` was copied back into its segment (``used`` counts it already)."""
        _remove(obj.spilled_path)
        obj.spilled_path = None
        self.restored_bytes_total += obj.size
        if self.objects.get(oid) is not obj:  # freed while it was copied back
            self.used -= obj.size
            shm.unlink(obj.path)

    def read_bytes(self, oid: bytes) -> bytes | None:
        """The raw segment contents (for sending to another node)."""
        obj = self.objects.get(oid)
        if obj is None or not obj.sealed:
            return None
        got = self.read_range(oid, 0, obj.size)
        return None if got is None else got[1]

    def read_range(self, oid: bytes, offset: int, length: int) -> tuple[int, bytes] | None:
        """``(size, bytes offset..offset+length)`` of a sealed object (in memory or
        spilled), for sending it to another node in chunks; None when it is not here."""
        obj = self.objects.get(oid)
        if obj is None or not obj.sealed:
            return None
        try:
            fd = os.open(obj.spilled_path or obj.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        base = 0 if obj.spilled_path else obj.offset
        try:
            return obj.size, _pread_all(fd, max(min(length, obj.size - offset), 0), base + offset)
        finally:
            os.close(fd)

    def free(self, oid: bytes) -> None:
        """Deletes an object; a segment that readers still map goes when they let go."""
        obj = self.objects.pop(oid, None)
        if obj is None:
            return
        if obj.spilling:  # its bytes already left ``used``; finish_spill removes the rest
            obj.freed = True
            return
        if obj.spilled_path:
            try:
                os.unlink(obj.spilled_path)
            except FileNotFoundError:
                pass
            shm.unlink(obj.path)
            return
        if self.mapped.get(oid):
            self.zombies[oid] = obj
            return
        self._release(obj)

    def _release(self, obj: StoredObject) -> None:
        """Gives a freed segment's memory to the pool, or back to the system."""
        if obj.slab is not None:
            self.used -= self.drop_memory(obj, keep=True)
            return
        if obj.disk:
            self.disk_bytes -= obj.size
            shm.unlink(obj.path)
            return
        budget = self.capacity // 2
        if obj.sealed and self.POOL_MIN <= obj.size <= budget:
            while self.pool and self.pool_bytes + obj.size > budget:
                # The oldest pooled segments make way for the newest.
                psize, path = self.pool.pop(0)
                shm.unlink(path)
                self.pool_bytes -= psize
                self.used -= psize
            self._pool_seq += 1
            ppath = f"{obj.path.rsplit('-', 1)[0]}-pool{self._pool_seq}"
            try:
                os.rename(obj.path, ppath)
                self.pool.append((obj.size, ppath))
                self.pool_bytes += obj.size
                return
            except OSError:
                pass
        self.used -= obj.size
        shm.unlink(obj.path)

    POOL_MIN = 1 << 20

    def map_added(self, oid: bytes) -> None:
        """A reader mapped ``oid``; its segment must not be reused until unmapped."""
        self.mapped[oid] = self.mapped.get(oid, 0) + 1

    def map_removed(self, oid: bytes) -> None:
        """A reader dropped its mapping of ``oid``."""
        n = self.mapped.get(oid, 0) - 1
        if n > 0:
            self.mapped[oid] = n
            return
        self.mapped.pop(oid, None)
        obj = self.zombies.pop(oid, None)
        if obj is not None:
            self._release(obj)

    def clear(self) -> None:
        """Deletes everything (node shutdown)."""
        self.slabs.closing = True  # (values still mapped somewhere keep their bytes: see SlabAllocator.clear)
        self.mapped.clear()
        for oid in list(self.objects):
            self.free(oid)
        for obj in self.zombies.values():
            if obj.disk:
                self._release(obj)
            else:
                self.drop_memory(obj)
        self.zombies.clear()
        self.slabs.clear()
        for _, path in self.pool:
            shm.unlink(path)
        self.pool.clear()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def stats(self) -> dict:
        """Usage figures for status and tests."""
        return {
            "capacity": self.capacity,
            "used": self.used,
            "objects": len(self.objects),
            "pinned": len(self.mapped),  # objects some reader maps now
            "spilled": sum(1 for o in self.objects.values() if o.spilled_path),
            "disk_backed": sum(1 for o in self.objects.values() if o.disk),
            "disk_backed_bytes": self.disk_bytes,
            "pooled_bytes": self.pool_bytes,
            "spilled_bytes_total": self.spilled_bytes_total,
            "restored_bytes_total": self.restored_bytes_total,
            **self.slabs.stats(),
        }


def spill_files(spill_dir: str, victims: list[tuple[bytes, StoredObject]]) -> list[str]:
    """Copies the segments ``plan_room`` picked to files under ``spill_dir`` (file I/O
    only: safe on any thread); returns their paths, in order."""
    os.makedirs(spill_dir, mode=0o700, exist_ok=True)
    dests = []
    for oid, obj in victims:
        dest = os.path.join(spill_dir, oid.hex())
        if obj.slab is None:
            shutil.copyfile(obj.path, dest)
        else:  # its slot's bytes
            fd = os.open(obj.path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                data = _pread_all(fd, obj.size, obj.offset)
            finally:
                os.close(fd)
            with open(dest, "wb") as f:
                f.write(data)
        dests.append(dest)
    return dests


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (``pread`` may return fewer in one call)."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
