"""Shared-memory segments, one file per object under /dev/shm.

A segment is created by the process that makes the object (after its node
daemon reserved the space), written once, then only ever mapped read-only:
readers get zero-copy views.  Unlinking a segment that is still mapped is
safe; the memory goes away when the last mapping does.

/dev/shm is writable by every local user and segment names can be guessed,
so a segment is created exclusively (``O_CREAT | O_EXCL``, mode 0600, no
symlink followed).  The one file that may already be there is a freed
segment the store renamed for reuse: it is taken only if ``fstat`` shows it
is this user's and owner-only.  Readers check the same before they map.  A
file planted by another user is never written to, read or mapped.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


class ForeignSegmentError(PermissionError):
    """A segment file is not this user's own, owner-only file: it is not used."""


def segment_path(prefix: str, object_id: bytes) -> str:
    """The file that holds ``object_id`` for the store named ``prefix``."""
    return os.path.join(SHM_DIR or "/tmp", f"{prefix}-{object_id.hex()}")


def _verify(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & 0o077 or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ForeignSegmentError(
            f"refusing the shared-memory segment {path}: it is owned by uid {st.st_uid} with mode "
            f"{mode:04o}, but skate's segments are this user's (uid {os.geteuid()}) with mode 0600. "
            "Another local user may have planted it; remove it (as root) and retry."
        )
    return st


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ForeignSegmentError(f"refusing the shared-memory segment {path}: it is a symbolic link") from None
        raise


def open_verified(path: str, flags: int) -> tuple[int, int]:
    """``(descriptor, size)`` of an existing segment or slab, opened with ``flags``
    (``os.O_RDONLY`` or ``os.O_RDWR``) after checking it is this user's owner-only file.

    Raises:
        ForeignSegmentError: when it is not.
        FileNotFoundError: when it is gone.
    """
    fd = _open(path, flags)
    return fd, _verify(fd, path).st_size


def open_writable(path: str) -> int:
    """A read-write descriptor of a new segment, or of this user's own recycled one.

    Raises:
        ForeignSegmentError: when another user's (or a group/other-accessible)
            file is in the way.
    """
    try:
        return _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        pass
    fd = _open(path, os.O_RDWR)  # a segment the store recycled (renamed into place)
    _verify(fd, path)
    return fd


def create(path: str, size: int) -> mmap.mmap:
    """Creates (or reuses, when the store recycled one) a segment and maps it writable, pre-faulted."""
    fd = open_writable(path)
    try:
        os.ftruncate(fd, size)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


#: Bytes per ``pwrite`` (Linux moves at most about 2 GiB per call).
_WRITE_CHUNK = 1 << 30


def write_pieces(path: str, size: int, pieces: list) -> None:
    """Creates (or reuses, when the store recycled one) segment ``path`` of
    ``size`` bytes and writes ``(offset, bytes)`` pieces into it (``pwrite_pieces``)."""
    fd = open_writable(path)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        pwrite_pieces(fd, pieces)
    finally:
        os.close(fd)


def pwrite_pieces(fd: int, pieces: list) -> None:
    """Writes ``(offset, bytes)`` pieces into the segment open as ``fd``.

    Through ``pwrite`` rather than a mapping: tmpfs then fills each new page
    as it allocates it, with no page fault per 4 KiB and no zeroing of a page
    about to be overwritten (about twice the speed of writing a fresh mapping).
    """
    for offset, piece in pieces:
        view = memoryview(piece).cast("B")
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done : done + _WRITE_CHUNK], offset + done)


def copy_in(src: str, path: str) -> None:
    """Creates segment ``path`` exclusively and fills it with the file ``src`` (a restore)."""
    fd = open_writable(path)
    try:
        with open(src, "rb") as f:
            os.ftruncate(fd, 0)
            while chunk := f.read(1 << 22):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def open_readonly(path: str) -> mmap.mmap:
    """Maps an existing segment read-only, after checking it is this user's owner-only file.

    Raises:
        ForeignSegmentError: when it is not.
        FileNotFoundError: when it is gone.
    """
    fd = _open(path, os.O_RDONLY)
    size = _verify(fd, path).st_size
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def open_readonly_with_head(path: str, head: int = 2048) -> tuple[mmap.mmap, bytes]:
    """``open_readonly``, plus the segment's first ``head`` bytes read with ``pread``.

    A reader that needs only the start of a segment (its layout header and
    pickle data) then touches none of the mapping's pages: a ``get`` of
    10,000 objects takes no page fault, the values' pages are faulted in
    when (and if) they are read.
    """
    fd = _open(path, os.O_RDONLY)
    size = _verify(fd, path).st_size
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ), os.pread(fd, head, 0)
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    """Removes a segment; a missing one is not an error, and a file that is
    not this user's (planted under a segment's name) is left alone."""
    try:
        if os.lstat(path).st_uid != os.geteuid():
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
