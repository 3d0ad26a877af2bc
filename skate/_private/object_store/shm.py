"""Shared-memory segments, one file per object under /dev/shm.

A segment is created by the process that makes the object (after its node
daemon reserved the space), written once, then only ever mapped read-only:
readers get zero-copy views.  Unlinking a segment that is still mapped is
safe; the memory goes away when the last mapping does.
"""

from __future__ import annotations

import mmap
import os

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


def segment_path(prefix: str, object_id: bytes) -> str:
    """The file that holds ``object_id`` for the store named ``prefix``."""
    return os.path.join(SHM_DIR or "/tmp", f"{prefix}-{object_id.hex()}")


def create(path: str, size: int) -> mmap.mmap:
    """Creates (or reuses, when the store recycled one) a segment and maps it writable, pre-faulted."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def open_readonly(path: str) -> mmap.mmap:
    """Maps an existing segment read-only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    """Removes a segment; a missing one is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
