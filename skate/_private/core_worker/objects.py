"""Object access of the core worker: put, get and wait.

::

    put(v)   -> serialize -> small: the owner's MemoryStore; large: reserve a
                segment on this node, write it in place, seal
    get(refs)-> owned: wait on the MemoryStore (the waiting thread may read the
                reply itself, see ``wire.Connection.lead``); borrowed: ask the
                owner (``get_object``) -> inline bytes, or a segment to map
    wait(refs) -> one wake-up for the whole list (``MemoryStore.gen``)

``ObjectAccess`` is one part of ``CoreWorker`` (see ``core``): it uses the
core worker's loop, connections and memory store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from skate import exceptions as exc
from skate._private import serialization, wire
from skate._private.config import CONFIG
from skate._private.core_worker.errors import as_error
from skate._private.core_worker.memory_store import ERROR, INLINE, PENDING, SHM
from skate._private.object_store import shm, slab
from skate.object_ref import ObjectRef


class _Gather:
    """Waits, in a user thread, until ``need`` of ``n`` slots are filled."""

    __slots__ = ("results", "need", "lock", "count", "_done")

    def __init__(self, n: int, need: int) -> None:
        self.results: list = [None] * n
        self.need = need
        self.count = 0
        self.lock = threading.Lock()
        # A bare lock, held until done: one futex wake, cheaper than an Event.
        self._done = threading.Lock()
        self._done.acquire()

    def set(self, i: int, value: Any) -> None:
        with self.lock:
            self.results[i] = value
            self.count += 1
            release = self.count == self.need
        if release:
            self._done.release()

    def wait(self, timeout: float | None) -> bool:
        return self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0))

    def done(self) -> bool:
        return self.count >= self.need

    def wait_reading(self, vias: set, timeout: float | None) -> bool:
        """``wait``; when every missing value comes over one connection, this
        thread reads that connection itself rather than being woken by the
        I/O thread (see ``wire.Connection.lead``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        _read_replies(vias, self.done, deadline)
        return self.wait(None if deadline is None else deadline - time.monotonic())


def _read_replies(vias: set, done: Callable[[], bool], deadline: float | None) -> None:
    """Sees to it that the replies carrying awaited values get read: by this
    thread, until ``done()``, when they all come over one connection; else by
    the I/O loop (``vias``: their connections, None where unknown)."""
    if len(vias) == 1 and None not in vias:
        next(iter(vias)).lead(done, deadline)
        return
    for conn in vias:
        if conn is not None:
            conn.watch_threadsafe()

class ObjectAccess:
    """put/get/wait and the owner's ``get_object`` service (part of ``CoreWorker``)."""

    # --- put ------------------------------------------------------------------------
    def new_put_id(self) -> bytes:
        """A fresh object id for a put (unique prefix + counter: no syscall, any thread)."""
        return self._put_prefix + next(self._put_counter).to_bytes(8, "little")

    def new_task_id(self) -> bytes:
        """A fresh task id (unique prefix + counter: no syscall, any thread)."""
        return self._task_prefix + next(self._task_counter).to_bytes(8, "little")

    def put(self, value: Any, _owner: Any = None) -> Any:
        """Stores ``value`` and returns an ObjectRef owned by this process."""
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself instead")
        data, bufs, refs = serialization.dumps(value, "the value passed to put()")
        oid = self.new_put_id()
        self.store_value(oid, data, bufs, refs, ready=True)
        return ObjectRef(oid, self.address)

    def store_value(self, oid: bytes, data: bytes, bufs: list, refs: list, ready: bool) -> tuple:
        """Keeps a serialized value: inline when small, in shared memory when large.

        Returns the reply meta for a task return (``ready=False``), else None.
        """
        size = len(data) + sum(b.nbytes for b in bufs)
        if size <= CONFIG.max_inline_bytes:
            bufs = [bytes(b) for b in bufs]
            if ready:
                self.store.put_ready(oid, INLINE, data, bufs)
                if refs:
                    self.store.get(oid).contained = refs
            return INLINE, data, bufs
        self.write_shm(oid, data, bufs, self.address if ready else None)
        if ready:
            self.store.put_ready(oid, SHM, None, [], self.node_id, size)
            if refs:
                self.store.get(oid).contained = refs
        return SHM, None, []

    def write_shm(self, oid: bytes, data: bytes, bufs: list, owner: list | None = None) -> None:
        """Writes a value into this node's shared-memory store.

        ``owner`` (the owner's address) lets the node daemon free the segment
        should its owner die without freeing it.
        """
        size = serialization.layout_size(data, bufs)
        # What this thread let go of goes first, so the node daemon can hand a
        # just-freed warm segment to this reserve: the values' mappings dropped
        # (a freed segment still mapped is not reused), then the frees.
        if self._unmaps:
            self._flush_unmapped()
        self._send_local_frees()
        if self.off_node:
            # This host has no node daemon: send the bytes to the node.
            buf = bytearray(size)
            serialization.write_layout(memoryview(buf), data, bufs)
            try:
                self.request(self.raylet, "obj_write", {"oid": oid}, [buf])
            except wire.RemoteError as e:
                raise exc.ObjectStoreFullError(str(e).split(": ", 1)[-1]) from None
            return
        body: dict = {"oid": oid, "size": size}
        if owner:
            body["owner"] = owner
        try:
            path = self.request(self.raylet, "obj_reserve", body)
        except wire.RemoteError as e:
            raise exc.ObjectStoreFullError(str(e).split(": ", 1)[-1]) from None
        try:
            m = self._writable_map(path, size, data, bufs)
            if m is not None:
                mv = memoryview(m)
                try:
                    serialization.write_layout(mv, data, bufs)
                finally:
                    mv.release()
        except BaseException:
            self.raylet.notify("obj_free", [oid])  # the reservation must not outlive the failure
            raise
        self.raylet.notify("obj_seal", {"oid": oid})

    def _writable_map(self, path: str, size: int, data: bytes, bufs: list) -> Any:
        """A writable mapping of a recycled segment, reusing this process's mapping
        of it if any; None when the segment was new and the value is written already.

        A new segment is written with ``pwrite``: tmpfs fills each page as it
        allocates it, with no page fault and no zeroing per 4 KiB (about twice
        as fast as writing a fresh mapping).  The store recycles freed segments
        (same file, new name), whose pages are there already, so a process that
        writes large objects in a loop keeps writing into mappings it already
        has: no page-table set-up or tear-down per object.
        """
        if "@" in path:  # a slot of a slab (``slab.location``)
            slab.write(path, serialization.layout_pieces(data, bufs))
            return None
        cache = self._wmaps
        for key, (m, fd) in list(cache.items()):
            if os.fstat(fd).st_nlink == 0:  # dropped by the store: let the memory go
                del cache[key]
                m.close()
                os.close(fd)
        fd = shm.open_writable(path)  # exclusive, or this user's own recycled segment
        st = os.fstat(fd)
        if st.st_size == 0:
            try:
                os.ftruncate(fd, size)
                shm.pwrite_pieces(fd, serialization.layout_pieces(data, bufs))
            finally:
                os.close(fd)
            return None
        if st.st_size != size:
            os.ftruncate(fd, size)
        key = (st.st_dev, st.st_ino)
        hit = cache.pop(key, None)
        if hit is not None and len(hit[0]) >= size:
            os.close(fd)
            cache[key] = hit
            return hit[0]
        if hit is not None:
            hit[0].close()
            os.close(hit[1])
        import mmap

        m = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        cache[key] = (m, fd)
        while len(cache) > 4:
            _, (old, ofd) = cache.popitem(last=False)
            old.close()
            os.close(ofd)
        return m

    # --- get ------------------------------------------------------------------------
    def get(self, refs: Any, timeout: float | None = None) -> Any:
        """Values of one ref or a list of refs (``get`` of the public API)."""
        single = isinstance(refs, ObjectRef)
        if single:
            refs = [refs]
        elif not isinstance(refs, (list, tuple)):
            raise ValueError(f"get() takes an ObjectRef or a list of them, not {type(refs).__name__}")
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise ValueError(f"get() takes ObjectRefs; got a {type(r).__name__} in the list")
        resolved = self._resolve_all(refs, len(refs), timeout)
        if resolved is None:
            raise exc.GetTimeoutError(f"get() timed out after {timeout} seconds")
        values = self._materialize_all(refs, resolved)
        if self.borrows_inflight:
            self.call(self.flush_borrows())
        return values[0] if single else values

    def _materialize_all(self, refs: list, resolved: list) -> list:
        """``materialize`` of each ref, with one ``obj_get_many`` round trip to the
        node daemon for all the shared-memory ones instead of one each."""
        if len(refs) == 1:
            return [self.materialize(refs[0], resolved[0])]
        shm_at = [i for i, snap in enumerate(resolved) if snap[0] == SHM]
        if len(shm_at) < 2 or self.off_node:
            return [self.materialize(r, snap) for r, snap in zip(refs, resolved, strict=True)]
        body = {"oids": [refs[i]._id for i in shm_at], "node_ids": [resolved[i][3] for i in shm_at]}
        try:
            paths = dict(zip(shm_at, self.request(self.raylet, "obj_get_many", body), strict=True))
        except wire.RemoteError:
            paths = {}
        values = []
        try:
            with serialization.gc_paused() if len(shm_at) >= 100 else contextlib.nullcontext():
                for i, (r, snap) in enumerate(zip(refs, resolved, strict=True)):
                    path = paths.pop(i, None)
                    # No path: obj_get alone says why (lost, store full) and recovers what it can.
                    values.append(self.read_shm(path, r._id) if path is not None else self.materialize(r, snap))
        finally:
            unused = [refs[i]._id for i, path in paths.items() if path is not None]
            if unused:  # counted as mapped by obj_get_many, never mapped: let them go
                self.raylet.notify("obj_unmapped", unused)
        return values

    def _resolve_all(self, refs: list, need: int, timeout: float | None) -> list | None:
        """Waits until ``need`` refs are ready; returns each one's snapshot (None: not ready)."""
        n = len(refs)
        results: list = [None] * n
        missing = []
        store = self.store
        for i, r in enumerate(refs):
            e = store.get(r._id)
            if e is not None and e.state != PENDING:
                results[i] = _snap(e)
            else:
                missing.append(i)
        if n - len(missing) >= need or not missing:
            return results
        g = _Gather(n, need - (n - len(missing)))
        g.results = results
        waiters = []
        vias = set()
        for i in missing:
            r = refs[i]
            e = store.get(r._id)
            if e is not None:

                def waiter(i: int = i, e: Any = e) -> None:
                    g.set(i, _snap(e))

                ready = store.add_waiter(r._id, waiter)
                if ready is not None:
                    g.set(i, _snap(ready))
                else:
                    waiters.append((r._id, waiter))
                    vias.add(e.via)
            else:
                vias.add(None)
                self.post(self._start_remote_fetch, r, g, i)
        blocked = self.block(True)
        noted = self.waits.begin("get" if need >= n else "wait", refs)
        try:
            if not g.wait_reading(vias, timeout):
                for oid, w in waiters:
                    store.remove_waiter(oid, w)
                if need >= n:
                    return None
        finally:
            self.waits.end(noted)
            if blocked:
                self.block(False)
        return list(g.results)

    def block(self, on: bool) -> bool:
        lease = getattr(self.ctx, "lease_id", None)
        if lease is None:
            return False
        self.post(self.raylet.notify, "lease_blocked" if on else "lease_unblocked", {"lease_id": lease})
        return True

    def _start_remote_fetch(self, ref: Any, g: _Gather, i: int) -> None:
        async def go() -> None:
            g.set(i, await self.fetch_remote(ref._id, ref._owner))

        asyncio.ensure_future(go())

    async def fetch_remote(self, oid: bytes, owner: list | None, ready_only: bool = False) -> tuple:
        """Asks an object's owner for it; returns a snapshot tuple."""
        if owner is None:
            return (ERROR, exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} has no known owner."), [], None, 0)
        try:
            conn = await self.conn_to(owner)
            reply = await conn.request("get_object", [oid, ready_only])
        except (ConnectionError, OSError, asyncio.TimeoutError):
            return (ERROR, exc.OwnerDiedError(oid.hex()), [], None, 0)
        body, bufs = reply if isinstance(reply, tuple) else (reply, [])
        if body is None:
            return (
                ERROR,
                exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} was already freed by its owner."),
                [],
                None,
                0,
            )
        state, node_id, size = body
        data = bufs[0] if bufs else None
        return (state, data, bufs[1:], node_id, size)

    async def on_get_object(self, conn: wire.Connection, body: list, bufs: list) -> wire.Reply:
        oid, ready_only = body
        e = self.store.get(oid)
        if e is None:
            return wire.Reply(None)
        if e.state == PENDING:
            fut = self.loop.create_future()
            ready = self.store.add_waiter(oid, lambda: self.loop.call_soon_threadsafe(_set_if_pending, fut, None))
            if ready is None:
                if e.via is not None:
                    e.via.watch()
                await fut
        if e.state == ERROR:
            e.retrieved = True
        if ready_only or e.state == SHM:
            return wire.Reply([e.state, e.node_id, e.size])
        return wire.Reply([e.state, e.node_id, e.size], [e.data, *e.bufs])

    def materialize(self, ref: Any, snap: tuple) -> Any:
        state, data, bufs, node_id, size = snap
        if state == INLINE:
            return serialization.loads(data, bufs)
        if state == SHM:
            if self.off_node:
                return self.call(self.read_over_wire(ref._id, node_id))
            try:
                return self.read_shm(self._local_path(ref._id, node_id), ref._id)
            except exc.ObjectLostError as e:
                # Its only copy is gone: the task that made it runs again (asked of its
                # owner), maybe on this very lease's resources, which a waiting task lends.
                blocked = self.block(True)
                try:
                    snap = self.call(self.lineage.recover(ref._id, ref._owner, node_id, e))
                finally:
                    if blocked:
                        self.block(False)
                return self.materialize(ref, snap)
        if state == ERROR:
            e = self.store.get(ref._id)
            if e is not None:
                e.retrieved = True
            raise as_error(data, bufs)
        raise exc.RaySystemError(f"object {ref.hex()} in unexpected state {state}")

    def _local_path(self, oid: bytes, node_id: bytes | None) -> str:
        """``shm_path`` from a user thread; if a cancel interrupts the wait, the
        reader count the node daemon's answer takes is given back (else pinned)."""
        fut = asyncio.run_coroutine_threadsafe(self.shm_path(oid, node_id), self.loop)
        try:
            return fut.result()
        except BaseException:
            # (the interrupt may also land just after the answer came: then at once)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception() or self._unmapped(oid))
            del fut  # (no cycle exception -> frame -> future: it kept callers' values alive)
            raise

    async def shm_path(self, oid: bytes, node_id: bytes | None) -> str:
        """Makes sure ``oid`` is in this node's store; returns its segment path."""
        try:
            return await self.raylet.request("obj_get", {"oid": oid, "node_id": node_id})
        except wire.RemoteError as e:
            if str(e).startswith(("StoreFull", "ObjectStoreFull")):  # no room to copy it here: not lost
                raise exc.ObjectStoreFullError(f"cannot bring object {oid.hex()} to this node: {e}") from None
            raise exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} is lost: {e}") from None

    async def read_over_wire(self, oid: bytes, node_id: bytes | None) -> Any:
        """A large object's value fetched through the node daemon (a driver on a host with none)."""
        try:
            _, bufs = await self.raylet.request("obj_read", {"oid": oid, "node_id": node_id})
        except wire.RemoteError as e:
            raise exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} is lost: {e}") from None
        data, vbufs = serialization.read_layout(memoryview(bufs[0]))
        return serialization.loads(data, vbufs)

    def read_shm(self, path: str, oid: bytes) -> Any:
        """Maps a segment (``shm_path`` counted us as a reader) and deserializes in place.

        When the mapping is garbage-collected (no value views it any more) the
        node daemon is told, so it may reuse the segment's memory.
        """
        try:
            if "@" in path:  # a slot of a slab (``slab.location``)
                view, head = self.slab_reader.view(path, self._unmapped, oid)
            else:
                m, head = shm.open_readonly_with_head(path)
                weakref.finalize(m, self._unmapped, oid)
                view = memoryview(m)
        except FileNotFoundError:
            self._unmapped(oid)
            raise exc.ObjectLostError(message=f"the object segment {path} is gone") from None
        data, bufs = serialization.read_layout(view, head)
        return serialization.loads(data, bufs)

    def _unmapped(self, oid: bytes) -> None:
        # Batched: dropping a list of 10,000 values sends one message, not 10,000.
        if self.closed or self.raylet.closed:
            return
        with self._unmaps_lock:
            self._unmaps.append(oid)
            first = len(self._unmaps) == 1
        if first:
            try:
                self.post(self._flush_unmapped)
            except RuntimeError:  # the loop is closed: the daemon sees the connection go
                pass

    def _flush_unmapped(self) -> None:
        with self._unmaps_lock:
            oids, self._unmaps = self._unmaps, []
        if oids and not self.raylet.closed:
            self.raylet.notify("obj_unmapped", oids)

    async def materialize_async(self, oid: bytes, snap: tuple, owner: list | None = None) -> Any:
        """Like ``materialize`` but from the I/O thread (``owner``: the object's owner's address)."""
        state, data, bufs, node_id, size = snap
        if state == SHM:
            if self.off_node:
                return await self.read_over_wire(oid, node_id)
            try:
                return self.read_shm(await self.shm_path(oid, node_id), oid)
            except exc.ObjectLostError as e:
                return await self.materialize_async(oid, await self.lineage.recover(oid, owner, node_id, e), owner)
        if state == ERROR:
            e = self.store.get(oid)
            if e is not None:
                e.retrieved = True
            raise as_error(data, bufs)
        return serialization.loads(data, bufs)

    async def resolve(self, oid: bytes, owner: list | None) -> tuple:
        """Waits (on the I/O thread) until ``oid`` is ready; returns its snapshot."""
        e = self.store.get(oid)
        if e is None:
            return await self.fetch_remote(oid, owner)
        if e.state == PENDING:
            fut = self.loop.create_future()
            ready = self.store.add_waiter(oid, lambda: self.loop.call_soon_threadsafe(_set_if_pending, fut, None))
            if ready is None:
                if e.via is not None:
                    e.via.watch()
                await fut
        return _snap(e)

    def when_ready(self, ref: Any, cb: Callable[[Any, BaseException | None], None]) -> None:
        """Calls ``cb(value, error)`` from the I/O thread once ``ref`` is ready."""

        async def go() -> None:
            try:
                snap = await self.resolve(ref._id, ref._owner)
                value = await self.materialize_async(ref._id, snap, ref._owner)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                cb(None, e)
                return
            cb(value, None)

        self.post(lambda: asyncio.ensure_future(go()))

    # --- wait -----------------------------------------------------------------------
    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True) -> tuple[list, list]:
        """Splits ``refs`` into ready and not ready (``wait`` of the public API)."""
        if isinstance(refs, ObjectRef):
            raise TypeError("wait() takes a list of ObjectRefs, not a single ObjectRef")
        refs = list(refs)
        if not all(type(r) is ObjectRef for r in refs):
            for r in refs:
                if not isinstance(r, ObjectRef):
                    raise TypeError(f"wait() takes a list of ObjectRefs; got a {type(r).__name__}")
        if len({r._id for r in refs}) != len(refs):
            raise ValueError("wait() got the same ObjectRef more than once")
        if num_returns <= 0:
            raise ValueError("num_returns must be at least 1")
        if num_returns > len(refs):
            raise ValueError(f"num_returns ({num_returns}) is more than the number of refs ({len(refs)})")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or non-negative")
        results = self._resolve_all_for_wait(refs, num_returns, timeout)
        ready, not_ready = [], []
        for r, res in zip(refs, results, strict=True):
            if res is not None and len(ready) < num_returns:
                ready.append(r)
            else:
                not_ready.append(r)
        return ready, not_ready

    def _resolve_all_for_wait(self, refs: list, need: int, timeout: float | None) -> list:
        """Which refs are ready, once ``need`` are or ``timeout`` passes (None: not ready).

        Scans without locks and, while too few are ready, sleeps until any
        owned object completes (one wake-up for the whole list, not a waiter
        per ref: ``wait`` is often called in a loop over a long list).
        Refs owned elsewhere are asked about once, on the loop.
        """
        store = self.store
        entries = store.entries
        deadline = None if timeout is None else time.monotonic() + timeout
        remote: dict[int, bool] | None = None
        blocked = False
        noted = None
        try:
            while True:
                gen = store.gen
                ready = [True if (e := entries.get(r._id)) is not None and e.state != PENDING else None for r in refs]
                if remote:
                    for i, done in remote.items():
                        if done:
                            ready[i] = True
                if sum(1 for x in ready if x) >= need:
                    return ready
                left = None if deadline is None else deadline - time.monotonic()
                if remote is None:
                    # What the missing values come over (None: no known connection).
                    vias = {e.via if (e := entries.get(r._id)) is not None else None for i, r in enumerate(refs) if not ready[i]}
                if left is not None and left <= 0:
                    # A poll: replies that no thread reads for are read by the loop.
                    for conn in vias:
                        if conn is not None:
                            conn.watch_threadsafe()
                    return ready
                if remote is None:
                    remote = {}
                    for i, r in enumerate(refs):
                        if not ready[i] and r._id not in entries:
                            remote[i] = False
                            self.post(self._start_ready_check, r, remote, i)
                    blocked = self.block(True)
                    noted = self.waits.begin("wait", refs)
                _read_replies(vias, lambda gen=gen: store.gen != gen, deadline)
                store.wait_any(gen, None if deadline is None else deadline - time.monotonic())
        finally:
            if noted is not None:
                self.waits.end(noted)
            if blocked:
                self.block(False)

    def _start_ready_check(self, ref: Any, remote: dict, i: int) -> None:
        async def go() -> None:
            await self.fetch_remote(ref._id, ref._owner, ready_only=True)
            remote[i] = True
            self.store.poke()

        asyncio.ensure_future(go())


def _snap(e: Any) -> tuple:
    return (e.state, e.data, e.bufs, e.node_id, e.size)


def _set_if_pending(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


