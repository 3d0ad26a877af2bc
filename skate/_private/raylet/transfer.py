"""Node-to-node object transfers: chunked, windowed, written straight to the segment.

::

    puller (node that needs the object)           holder (node that has it)
    pull(oid) -- obj_fetch(offset 0) ------------->  read_range: pread of one chunk
              <-- (size, chunk) ---------------------  (from the segment or its spilled file)
    reserve the segment (or a disk-backed file when the object is larger than the store)
    keep WINDOW obj_fetch requests in flight; as each chunk lands, pwrite it at
    its offset and ask for the next one
    seal

Flow control is the puller's: a holder only answers requests, so at most
``PULL_WINDOW`` chunks per object are in flight, and at most
``PULL_BUDGET`` chunks for all the pulls of a node daemon together.  Each
chunk crosses the TCP connection as encrypted records of at most 1 MiB
(``wire.records``) and is written into the segment file with ``pwrite``:
the daemon never maps the segment, so neither its heap nor its resident
shared pages grow with the object's size, whatever that size is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from skate._private.object_store import shm

#: Bytes per chunk of an object copied between nodes.
PULL_CHUNK = 8 << 20
#: Chunks of one object in flight at once.
PULL_WINDOW = 4
#: Chunks in flight for all the pulls of one node daemon together.
PULL_BUDGET = 16

#: ``fetch(offset) -> (object size, bytes from offset)``; raises KeyError when the holder lost it.
Fetch = Callable[[int], Awaitable[tuple[int, Any]]]


class ChunkBudget:
    """The node-wide bound on chunks in flight (an asyncio semaphore, made on first use)."""

    def __init__(self, chunks: int = PULL_BUDGET) -> None:
        self.chunks = chunks
        self._sem: asyncio.Semaphore | None = None

    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.chunks)
        return self._sem


async def pull(
    oid: bytes,
    fetch: Fetch,
    reserve: Callable[[int], Awaitable[str]],
    abandon: Callable[[], None],
    budget: ChunkBudget,
    chunk: int = PULL_CHUNK,
    window: int = PULL_WINDOW,
) -> str:
    """Copies object ``oid`` from its holder into a new local segment; returns its path.

    ``reserve(size)`` makes room and returns the path to write (a segment, or
    a disk-backed file); ``abandon()`` frees that reservation when the copy
    fails.  Raises ``KeyError`` when the holder no longer has the object,
    ``ConnectionError`` when it goes away.
    """
    sem = budget.sem()
    async with sem:
        size, first = await fetch(0)
    path = await reserve(size)
    fd = -1
    pending: dict[asyncio.Future, int] = {}
    try:
        fd = shm.open_writable(path)
        os.ftruncate(fd, size)
        _write_at(fd, first, 0, min(chunk, size), oid)
        del first
        offsets = iter(range(chunk, size, chunk))

        async def one(off: int) -> Any:
            async with sem:
                got_size, data = await fetch(off)
            if got_size != size:
                raise KeyError(f"object {oid.hex()} changed size during its transfer")
            return data

        for off in offsets:
            pending[asyncio.ensure_future(one(off))] = off
            if len(pending) >= window:
                break
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                off = pending.pop(f)
                _write_at(fd, f.result(), off, min(chunk, size - off), oid)
                nxt = next(offsets, None)
                if nxt is not None:
                    pending[asyncio.ensure_future(one(nxt))] = nxt
    except BaseException:
        for f in pending:
            f.cancel()
        abandon()
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return path


def _write_at(fd: int, data: Any, offset: int, expect: int, oid: bytes) -> None:
    view = memoryview(data).cast("B")
    if view.nbytes != expect:
        raise KeyError(f"object {oid.hex()}: a chunk of {view.nbytes} bytes at offset {offset}, expected {expect}")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
