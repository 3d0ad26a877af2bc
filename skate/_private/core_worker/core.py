"""The core worker: the runtime inside every driver and worker process.

::

    user threads                     I/O thread (asyncio loop)
    ------------                     -------------------------
    f.remote()  -- post() ------->   TaskSubmitter: lease, push to worker
    get(ref)    <- waiter wakes --   reply arrives -> MemoryStore.complete
    put(v)      -- small: table; large: reserve on node, write segment
                                     owner service: get_object, borrow_add/remove
                                     connections to node daemon, control store, peers

One event loop thread does all socket I/O; user threads only hand it work
(``post``) or wait on it (``call``).  Values are deserialized in the thread
that asked for them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from skate import exceptions as exc
from skate._private import daemon, error_log, ids, rpc, serialization
from skate._private.config import CONFIG
from skate._private.core_worker.memory_store import ERROR, INLINE, PENDING, SHM, MemoryStore
from skate._private.object_store import shm

log = logging.getLogger(__name__)

DRIVER, WORKER = "driver", "worker"


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
        I/O thread (see ``rpc.Connection.lead``)."""
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


class CoreWorker:
    """Ownership, object access and the I/O loop of one process."""

    def __init__(
        self,
        mode: str,
        raylet_socket: str,
        token: bytes,
        session_dir: str,
        worker_id: bytes | None = None,
        job_id: int = 0,
        namespace: str | None = None,
        log_to_driver: bool = True,
    ) -> None:
        self.mode = mode
        self.token = token
        self.session_dir = session_dir
        self.worker_id = worker_id or ids.new_id()
        self.job_id = job_id
        self.namespace = namespace
        self.closed = False
        self.closing = False
        self.store = MemoryStore(self._on_free, self._on_borrow_change)
        self.ctx = threading.local()
        self.conns: dict[bytes, asyncio.Future] = {}
        self.gcs_fut: asyncio.Future | None = None
        self.pid = os.getpid()
        self._put_counter = itertools.count(1)
        self._put_prefix = ids.new_id(12)
        self._task_counter = itertools.count(1)
        self._task_prefix = ids.new_id(8)
        self._borrow_out: dict[bytes, list] = {}
        self._unborrow_out: dict[bytes, list] = {}
        self._borrows_inflight = 0
        self._borrows_idle: asyncio.Event | None = None
        self._frees: list = []
        self._frees_lock = threading.Lock()
        self._wmaps: collections.OrderedDict = collections.OrderedDict()
        self._nodes: dict[bytes, dict] = {}
        self.extra_sockets: list[str] = []
        #: The last lines this process printed for the cluster (worker output,
        #: warnings, unhandled errors), after they were flushed; for tests.
        self.printed: collections.deque[str] = collections.deque(maxlen=2000)
        self.log_to_driver = log_to_driver
        self.handlers: dict[str, Callable] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")
        }
        self.loop = daemon.new_loop()
        self._thread = threading.Thread(target=self._run_loop, name="skate-io", daemon=True)
        self._thread.start()
        from skate._private.core_worker.actors import ActorManager
        from skate._private.core_worker.submitter import TaskSubmitter

        self.submitter = TaskSubmitter(self)
        self.actors = ActorManager(self)
        self.executor: Any = None
        self.call(self._connect(raylet_socket), timeout=30)

    # --- the loop ---------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def post(self, fn: Callable, *args: Any) -> None:
        """Runs ``fn(*args)`` on the I/O thread soon."""
        self.loop.call_soon_threadsafe(fn, *args)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Runs a coroutine on the I/O thread and waits for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking call from the I/O thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, conn: rpc.Connection, method: str, body: Any = None, bufs: Any = (), timeout: float | None = None) -> Any:
        """A blocking request on ``conn`` from a user thread."""

        async def go() -> Any:
            return await conn.request(method, body, bufs)

        return self.call(go(), timeout)

    async def _connect(self, raylet_socket: str) -> None:
        self._borrows_idle = asyncio.Event()
        self._borrows_idle.set()
        self.server_uds = os.path.join(self.session_dir, f"w-{self.worker_id.hex()[:16]}.sock")
        self.raylet = await rpc.connect(raylet_socket, self.token, self.handlers)
        self.raylet.on_close.append(self._raylet_lost)
        if self.mode == DRIVER:
            self._set_node(await self.raylet.request("register_client", {"worker_id": self.worker_id}))
            await self.start_server()
        else:
            env = os.environ
            self._set_node(
                {
                    "node_id": bytes.fromhex(env["SKATE_NODE_ID"]),
                    "ip": env["SKATE_NODE_IP"],
                    "store_prefix": env["SKATE_STORE_PREFIX"],
                    "gcs_address": env["SKATE_GCS_ADDRESS"],
                }
            )
            await self.start_server()

    def _set_node(self, info: dict) -> None:
        self.node_id = info["node_id"]
        self.node_ip = info["ip"]
        self.store_prefix = info["store_prefix"]
        self.gcs_address = info["gcs_address"]

    async def start_server(self) -> None:
        """Listens for peers (tasks pushed to us, owner requests)."""
        self._uds_server = await rpc.serve_unix(self.server_uds, self.token, self.handlers)
        self._tcp_server = await rpc.serve_tcp(self.node_ip, 0, self.token, self.handlers)
        port = self._tcp_server.sockets[0].getsockname()[1]
        self.address = [self.worker_id, self.node_ip, port, self.server_uds]

    def _raylet_lost(self, conn: rpc.Connection) -> None:
        if not self.closed and self.mode == WORKER:
            # Without its node daemon a worker has nothing to do.
            os._exit(1)

    # --- connections to peers -----------------------------------------------------
    async def conn_to(self, addr: list, exec_: bool = False) -> rpc.Connection:
        """A connection to the core worker at ``addr`` (reused, made on demand).

        ``exec_`` picks the worker's execution endpoint (tasks, actor calls),
        served by the thread that runs them; other traffic (ownership,
        cancel, kill) uses the control endpoint, served by its I/O thread.
        """
        if exec_ and len(addr) >= 6:
            wid: Any = (addr[0], "x")
            addr = [addr[0], addr[1], addr[4], addr[5]]
        else:
            wid = addr[0]
        fut = self.conns.get(wid)
        if fut is not None:
            if not fut.done():
                return await asyncio.shield(fut)
            if fut.exception() is None and not fut.result().closed:
                return fut.result()
        fut = self.conns[wid] = self.loop.create_future()
        try:
            target = addr[3] if addr[3] and os.path.exists(addr[3]) else (addr[1], addr[2])
            conn = await rpc.connect(target, self.token, self.handlers)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            self.conns.pop(wid, None)
            raise
        conn.peer = addr
        conn.on_close.append(lambda c, wid=wid: self._conn_closed(wid, c))
        if self.mode == WORKER or getattr(self, "address", None):
            conn.notify("hello", self.address)
        fut.set_result(conn)
        return conn

    def _conn_closed(self, wid: bytes, conn: rpc.Connection) -> None:
        fut = self.conns.get(wid)
        if fut is not None and fut.done() and not fut.exception() and fut.result() is conn:
            del self.conns[wid]

    def on_hello(self, conn: rpc.Connection, addr: list, bufs: list) -> None:
        conn.peer = addr
        wid = addr[0]
        if wid not in self.conns:
            fut = self.loop.create_future()
            fut.set_result(conn)
            self.conns[wid] = fut
            conn.on_close.append(lambda c, wid=wid: self._conn_closed(wid, c))

    async def gcs(self) -> rpc.Connection:
        """The connection to the control store (made on first use)."""
        if self.gcs_fut is None or (self.gcs_fut.done() and (self.gcs_fut.exception() or self.gcs_fut.result().closed)):
            self.gcs_fut = asyncio.ensure_future(rpc.connect(self.gcs_address, self.token, self.handlers))
        return await asyncio.shield(self.gcs_fut)

    def gcs_call(self, method: str, body: Any = None, bufs: Any = (), timeout: float = 60) -> Any:
        """A blocking request to the control store from a user thread."""

        async def go() -> Any:
            return await (await self.gcs()).request(method, body, bufs)

        try:
            return self.call(go(), timeout)
        except rpc.RemoteError as e:
            raise _remote_to_local(e) from None

    # --- put ------------------------------------------------------------------------
    def new_put_id(self) -> bytes:
        """A fresh object id for a put (unique prefix + counter: no syscall, any thread)."""
        return self._put_prefix + next(self._put_counter).to_bytes(8, "little")

    def new_task_id(self) -> bytes:
        """A fresh task id (unique prefix + counter: no syscall, any thread)."""
        return self._task_prefix + next(self._task_counter).to_bytes(8, "little")

    def put(self, value: Any, _owner: Any = None) -> Any:
        """Stores ``value`` and returns an ObjectRef owned by this process."""
        from skate.object_ref import ObjectRef

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
        self.write_shm(oid, data, bufs)
        if ready:
            self.store.put_ready(oid, SHM, None, [], self.node_id, size)
            if refs:
                self.store.get(oid).contained = refs
        return SHM, None, []

    def write_shm(self, oid: bytes, data: bytes, bufs: list) -> None:
        """Writes a value into this node's shared-memory store."""
        size = serialization.layout_size(data, bufs)
        self._send_local_frees()
        try:
            path = self.request(self.raylet, "obj_reserve", {"oid": oid, "size": size})
        except rpc.RemoteError as e:
            raise exc.ObjectStoreFullError(str(e).split(": ", 1)[-1]) from None
        m = self._writable_map(path, size)
        mv = memoryview(m)
        try:
            serialization.write_layout(mv, data, bufs)
        finally:
            mv.release()
        self.raylet.notify("obj_seal", {"oid": oid})

    def _writable_map(self, path: str, size: int) -> Any:
        """A writable mapping of a segment, reusing this process's mapping of it if any.

        The store recycles freed segments (same file, new name), so a process
        that writes large objects in a loop keeps writing into mappings it
        already has: no page-table set-up or tear-down per object.
        """
        cache = self._wmaps
        for key, (m, fd) in list(cache.items()):
            if os.fstat(fd).st_nlink == 0:  # dropped by the store: let the memory go
                del cache[key]
                m.close()
                os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        st = os.fstat(fd)
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
        from skate.object_ref import ObjectRef

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
        values = [self._materialize(r, res) for r, res in zip(refs, resolved, strict=True)]
        if self._borrows_inflight:
            self.call(self.flush_borrows())
        return values[0] if single else values

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
        blocked = self._block(True)
        try:
            if not g.wait_reading(vias, timeout):
                for oid, w in waiters:
                    store.remove_waiter(oid, w)
                if need >= n:
                    return None
        finally:
            if blocked:
                self._block(False)
        return list(g.results)

    def _block(self, on: bool) -> bool:
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

    async def on_get_object(self, conn: rpc.Connection, body: list, bufs: list) -> rpc.Reply:
        oid, ready_only = body
        e = self.store.get(oid)
        if e is None:
            return rpc.Reply(None)
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
            return rpc.Reply([e.state, e.node_id, e.size])
        return rpc.Reply([e.state, e.node_id, e.size], [e.data, *e.bufs])

    def _materialize(self, ref: Any, snap: tuple) -> Any:
        state, data, bufs, node_id, size = snap
        if state == INLINE:
            return serialization.loads(data, bufs)
        if state == SHM:
            path = self.call(self.shm_path(ref._id, node_id))
            return self._read_shm(path, ref._id)
        if state == ERROR:
            e = self.store.get(ref._id)
            if e is not None:
                e.retrieved = True
            raise _as_error(data, bufs)
        raise exc.RaySystemError(f"object {ref.hex()} in unexpected state {state}")

    async def shm_path(self, oid: bytes, node_id: bytes | None) -> str:
        """Makes sure ``oid`` is in this node's store; returns its segment path."""
        try:
            return await self.raylet.request("obj_get", {"oid": oid, "node_id": node_id})
        except rpc.RemoteError as e:
            raise exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} is lost: {e}") from None

    def _read_shm(self, path: str, oid: bytes) -> Any:
        """Maps a segment (``shm_path`` counted us as a reader) and deserializes in place.

        When the mapping is garbage-collected (no value views it any more) the
        node daemon is told, so it may reuse the segment's memory.
        """
        try:
            m = shm.open_readonly(path)
        except FileNotFoundError:
            self._unmapped(oid)
            raise exc.ObjectLostError(message=f"the object segment {path} is gone") from None
        weakref.finalize(m, self._unmapped, oid)
        data, bufs = serialization.read_layout(memoryview(m))
        return serialization.loads(data, bufs)

    def _unmapped(self, oid: bytes) -> None:
        # Sent at once (any thread may send): the segment can be reused sooner.
        if not self.closed and not self.raylet.closed:
            self.raylet.notify("obj_unmapped", [oid])

    async def materialize_async(self, oid: bytes, snap: tuple) -> Any:
        """Like ``_materialize`` but from the I/O thread."""
        state, data, bufs, node_id, size = snap
        if state == SHM:
            return self._read_shm(await self.shm_path(oid, node_id), oid)
        if state == ERROR:
            e = self.store.get(oid)
            if e is not None:
                e.retrieved = True
            raise _as_error(data, bufs)
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
                value = await self.materialize_async(ref._id, snap)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                cb(None, e)
                return
            cb(value, None)

        self.post(lambda: asyncio.ensure_future(go()))

    # --- wait -----------------------------------------------------------------------
    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True) -> tuple[list, list]:
        """Splits ``refs`` into ready and not ready (``wait`` of the public API)."""
        from skate.object_ref import ObjectRef

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
                    blocked = self._block(True)
                _read_replies(vias, lambda gen=gen: store.gen != gen, deadline)
                store.wait_any(gen, None if deadline is None else deadline - time.monotonic())
        finally:
            if blocked:
                self._block(False)

    def _start_ready_check(self, ref: Any, remote: dict, i: int) -> None:
        async def go() -> None:
            await self.fetch_remote(ref._id, ref._owner, ready_only=True)
            remote[i] = True
            self.store.poke()

        asyncio.ensure_future(go())

    # --- reference counting -----------------------------------------------------------
    def on_serialize_ref(self, ref: Any) -> None:
        """A ref is being pickled: remember it for the payload that carries it."""
        refs = serialization.contained_refs()
        if refs is not None:
            refs.append(ref)

    def _on_borrow_change(self, oid: bytes, owner: list | None, delta: int) -> None:
        if owner is None or self.closed:
            return
        if delta > 0:
            self._borrows_inflight += 1
            self.post(self._queue_borrow, self._borrow_out, oid, owner)
        else:
            self.post(self._queue_borrow, self._unborrow_out, oid, owner)

    def _queue_borrow(self, table: dict, oid: bytes, owner: list) -> None:
        key = owner[0]
        batch = table.get(key)
        if batch is None:
            table[key] = [owner, [oid]]
            if len(table) == 1:
                self.loop.call_soon(self._send_borrows, table)
        else:
            batch[1].append(oid)

    def _send_borrows(self, table: dict) -> None:
        items = list(table.values())
        table.clear()
        adding = table is self._borrow_out
        for owner, oids in items:
            asyncio.ensure_future(self._send_borrow_batch(owner, oids, adding))

    async def _send_borrow_batch(self, owner: list, oids: list, adding: bool) -> None:
        if adding:
            self._borrows_idle.clear()
        try:
            conn = await self.conn_to(owner)
            if adding:
                await conn.request("borrow_add", oids)
            else:
                conn.notify("borrow_remove", oids)
        except (ConnectionError, OSError, rpc.RemoteError):
            pass  # the owner is gone; its objects went with it
        finally:
            if adding:
                self._borrows_inflight -= len(oids)
                if self._borrows_inflight <= 0:
                    self._borrows_inflight = 0
                    self._borrows_idle.set()

    async def flush_borrows(self) -> None:
        """Waits until every borrow this process announced was acknowledged."""
        await asyncio.sleep(0)
        while self._borrows_inflight > 0:
            self._borrows_idle.clear()
            if self._borrows_inflight <= 0:
                break
            await self._borrows_idle.wait()

    def on_borrow_add(self, conn: rpc.Connection, oids: list, bufs: list) -> bool:
        # Borrows are remembered per connection: a borrower that dies drops them.
        held = getattr(conn, "borrows", None)
        if held is None:
            held = conn.borrows = collections.Counter()
            conn.on_close.append(self._borrower_gone)
        for oid in oids:
            if self.store.adjust(oid, borrowers=+1):
                held[oid] += 1
        return True

    def on_borrow_remove(self, conn: rpc.Connection, oids: list, bufs: list) -> None:
        held = getattr(conn, "borrows", None)
        for oid in oids:
            if held is not None and held.get(oid, 0) > 0:
                held[oid] -= 1
                if not held[oid]:
                    del held[oid]
                self.store.adjust(oid, borrowers=-1)

    def _borrower_gone(self, conn: rpc.Connection) -> None:
        if self.closing:
            return
        held, conn.borrows = conn.borrows, collections.Counter()
        for oid, n in held.items():
            self.store.adjust(oid, borrowers=-n)

    def _on_free(self, oid: bytes, e: Any) -> None:
        if e.state == SHM or (e.state == ERROR and not e.retrieved):
            with self._frees_lock:
                self._frees.append((oid, e))
                first = len(self._frees) == 1
            if first and not self.closed:
                self.post(self._flush_frees)

    def _send_local_frees(self) -> None:
        """Frees this node's segments now, from this thread (before a new reserve,
        so the node daemon can hand a just-freed warm segment to it)."""
        with self._frees_lock:
            if not self._frees:
                return
            local, rest = [], []
            for f in self._frees:
                (local if f[1].state == SHM and f[1].node_id in (self.node_id, None) else rest).append(f)
            if not local:
                return
            self._frees = rest
        if not self.raylet.closed:
            self.raylet.notify("obj_free", [oid for oid, _ in local])

    def _flush_frees(self) -> None:
        with self._frees_lock:
            frees, self._frees = self._frees, []
        for _oid, e in frees:
            if e.state == ERROR and not e.retrieved and not os.environ.get("SKATE_IGNORE_UNHANDLED_ERRORS"):
                try:
                    err = _as_error(e.data, e.bufs)
                except Exception as x:  # noqa: BLE001
                    err = x
                if not isinstance(err, exc.TaskCancelledError):
                    text = f"Unhandled error (suppress with SKATE_IGNORE_UNHANDLED_ERRORS=1): {err}"
                    print(text, file=sys.stderr, flush=True)
                    self.printed.append(text)
                    error_log.record(err)
        by_node: dict[bytes, list] = {}
        for oid, e in frees:
            if e.state == SHM:
                by_node.setdefault(e.node_id, []).append(oid)
        for node_id, oids in by_node.items():
            if node_id == self.node_id or node_id is None:
                if not self.raylet.closed:
                    self.raylet.notify("obj_free", oids)
            else:
                asyncio.ensure_future(self._free_remote(node_id, oids))

    async def _free_remote(self, node_id: bytes, oids: list) -> None:
        """Frees objects whose primary copy lives on another node."""
        try:
            conn = await self.raylet_for(node_id)
            conn.notify("obj_free", oids)
        except Exception:  # noqa: BLE001 - the node is gone, and its objects with it
            pass

    async def raylet_for(self, node_id: bytes) -> rpc.Connection:
        """A connection to the node daemon of ``node_id``."""
        if node_id == self.node_id:
            return self.raylet
        info = self._nodes.get(node_id)
        if info is None:
            gcs = await self.gcs()
            for n in await gcs.request("get_nodes"):
                self._nodes[n["node_id"]] = n
            info = self._nodes[node_id]
        return await self.submitter._raylet(info)

    # --- notifications from daemons --------------------------------------------------
    def on_warning(self, conn: rpc.Connection, text: str, bufs: list) -> None:
        print(f"Warning: {text}", file=sys.stderr, flush=True)
        self.printed.append(f"Warning: {text}")

    def on_pub(self, conn: rpc.Connection, body: list, bufs: list) -> None:
        channel, msg = body
        if channel == "logs":
            if not self.log_to_driver:
                return
            out, err = [], []
            for text, is_err in msg:
                (err if is_err else out).append(text)
            if out:
                sys.stdout.write("\n".join(out) + "\n")
                sys.stdout.flush()
            if err:
                sys.stderr.write("\n".join(err) + "\n")
                sys.stderr.flush()
            self.printed.extend(out)
            self.printed.extend(err)

    def on_ping(self, conn: rpc.Connection, body: Any, bufs: list) -> str:
        return "pong"

    # --- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Returns leases, closes connections and stops the I/O thread."""
        if self.closed:
            return
        self.closing = True
        try:
            self.call(self._close(), timeout=5)
        except Exception:
            pass
        self.closed = True
        for m, fd in self._wmaps.values():
            m.close()
            os.close(fd)
        self._wmaps.clear()
        self.loop.call_soon_threadsafe(self._stop_loop)
        self._thread.join(timeout=5)
        for path in (getattr(self, "server_uds", None), *self.extra_sockets):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    async def _drain_logs(self) -> None:
        """Prints what workers printed before now (lines travel via the control store)."""
        raylets = [self.raylet] + [
            f.result() for f in self.submitter.raylets.values() if f.done() and not f.exception()
        ]
        await asyncio.gather(*(r.request("flush_logs") for r in raylets if not r.closed), return_exceptions=True)
        if self.gcs_fut is not None and self.gcs_fut.done() and not self.gcs_fut.exception():
            gcs = self.gcs_fut.result()
            if not gcs.closed:
                # Answered after every line published so far came in on this connection.
                await gcs.request("ping")

    def _stop_loop(self) -> None:
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in pending:
            t.cancel()

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)
            self.loop.stop()

        if pending:
            asyncio.ensure_future(drain())
        else:
            self.loop.stop()

    async def _close(self) -> None:
        if self.mode == DRIVER and self.log_to_driver:
            try:
                await asyncio.wait_for(self._drain_logs(), 2)
            except Exception:  # noqa: BLE001 - best effort: the cluster may be gone
                pass
        self.submitter.close()
        self._flush_frees()
        await asyncio.sleep(0)
        for srv in (getattr(self, "_uds_server", None), getattr(self, "_tcp_server", None)):
            if srv is not None:
                srv.close()
        for fut in list(self.conns.values()):
            if fut.done() and not fut.exception():
                fut.result().close()
        if self.gcs_fut is not None and self.gcs_fut.done() and not self.gcs_fut.exception():
            self.gcs_fut.result().close()
        self.raylet.close()


def _snap(e: Any) -> tuple:
    return (e.state, e.data, e.bufs, e.node_id, e.size)


def _set_if_pending(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _as_error(data: Any, bufs: list) -> BaseException:
    if isinstance(data, BaseException):
        return data
    err = serialization.loads(data, bufs)
    if isinstance(err, exc.RayTaskError):
        return err.as_instanceof_cause()
    return err


def _remote_to_local(e: rpc.RemoteError) -> Exception:
    text = str(e)
    kind, _, msg = text.partition(": ")
    if kind == "ValueError":
        return ValueError(msg)
    return exc.RaySystemError(text)


def error_payload(err: BaseException) -> tuple[bytes, list]:
    """Serializes an error value for an object (falls back to a plain RayError)."""
    try:
        data, bufs, _ = serialization.dumps(err, "the error")
    except Exception:
        data, bufs, _ = serialization.dumps(exc.RayError(f"{type(err).__name__}: {err}"), "the error")
    return data, [bytes(b) for b in bufs]
