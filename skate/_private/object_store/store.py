"""A node's shared-memory store: space accounting, eviction and spilling.

The node daemon owns one ``ObjectStore``.  Producers ask it to ``reserve``
space (it frees room first, by dropping secondary copies and spilling primary
copies to disk, least recently used first), write the segment themselves and
``seal`` it.  ``ensure_local`` brings a spilled object back.  The owner of an
object decides when it dies and calls ``free``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from skate._private.object_store import shm


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

    def _make_room(self, size: int, oid: bytes) -> None:
        if size > self.capacity:
            raise StoreFull(
                f"object of {size} bytes is larger than the object store "
                f"({self.capacity} bytes); start skate with a larger object_store_memory"
            )
        if self.used + size <= self.capacity:
            return
        # Secondary copies first (they can be fetched again), then spill primaries.
        for want_primary in (False, True):
            for key, obj in list(self.objects.items()):
                if self.used + size <= self.capacity:
                    return
                if key == oid or not obj.sealed or obj.spilled_path or obj.primary != want_primary:
                    continue
                if want_primary:
                    self._spill(key, obj)
                else:
                    self._drop(key, obj)
        if self.used + size > self.capacity:
            raise StoreFull(
                f"object store is full: {self.used} of {self.capacity} bytes in use by objects "
                f"still being written; cannot fit {size} bytes"
            )

    def _spill(self, oid: bytes, obj: StoredObject) -> None:
        os.makedirs(self.spill_dir, exist_ok=True)
        dest = os.path.join(self.spill_dir, oid.hex())
        shutil.copyfile(obj.path, dest)
        shm.unlink(obj.path)
        obj.spilled_path = dest
        self.used -= obj.size
        self.spilled_bytes_total += obj.size

    def _drop(self, oid: bytes, obj: StoredObject) -> None:
        shm.unlink(obj.path)
        self.used -= obj.size
        del self.objects[oid]

    def reserve(self, oid: bytes, size: int, primary: bool = True) -> str:
        """Makes room for ``size`` bytes and returns the segment path to create."""
        if oid in self.objects:
            return self.objects[oid].path
        self._make_room(size, oid)
        path = shm.segment_path(self.prefix, oid)
        self.objects[oid] = StoredObject(size, path, primary)
        self.used += size
        return path

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
        """The segment path of a sealed object, restoring it from disk if spilled."""
        obj = self.objects.get(oid)
        if obj is None or not obj.sealed:
            return None
        self.objects.move_to_end(oid)
        if obj.spilled_path:
            self._make_room(obj.size, oid)
            shutil.copyfile(obj.spilled_path, obj.path)
            os.unlink(obj.spilled_path)
            obj.spilled_path = None
            self.used += obj.size
            self.restored_bytes_total += obj.size
        return obj.path

    def read_bytes(self, oid: bytes) -> bytes | None:
        """The raw segment contents (for sending to another node)."""
        obj = self.objects.get(oid)
        if obj is None or not obj.sealed:
            return None
        with open(obj.spilled_path or obj.path, "rb") as f:
            return f.read()

    def free(self, oid: bytes) -> None:
        """Deletes an object and its files."""
        obj = self.objects.pop(oid, None)
        if obj is None:
            return
        if obj.spilled_path:
            try:
                os.unlink(obj.spilled_path)
            except FileNotFoundError:
                pass
        else:
            self.used -= obj.size
        shm.unlink(obj.path)

    def clear(self) -> None:
        """Deletes everything (node shutdown)."""
        for oid in list(self.objects):
            self.free(oid)
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def stats(self) -> dict:
        """Usage figures for status and tests."""
        return {
            "capacity": self.capacity,
            "used": self.used,
            "objects": len(self.objects),
            "spilled": sum(1 for o in self.objects.values() if o.spilled_path),
            "spilled_bytes_total": self.spilled_bytes_total,
            "restored_bytes_total": self.restored_bytes_total,
        }
