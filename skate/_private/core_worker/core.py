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
from collections.abc import Callable
from typing import Any

from skate._private import daemon, hostaddr, ids, wire
from skate._private.core_worker import streams
from skate._private.core_worker.errors import remote_to_local
from skate._private.core_worker.lineage import Lineage
from skate._private.core_worker.memory_store import MemoryStore
from skate._private.core_worker.objects import ObjectAccess
from skate._private.core_worker.refcount import RefCounting
from skate._private.core_worker.task_events import TaskEventBuffer
from skate._private.core_worker.waits import WaitReporter
from skate._private.gcs.client import GcsClient
from skate._private.object_store import slab

log = logging.getLogger(__name__)

DRIVER, WORKER = "driver", "worker"



class TaskThreadContext(threading.local):
    """What the calling thread runs: set by the executor around each task or call.

    The class attributes are the defaults a thread sees before it ran any (a
    missing attribute of a ``threading.local`` is looked up by raising and
    formatting an ``AttributeError``, a cost on every ``.remote()`` and ``get``).
    """

    task_id: bytes | None = None
    lease_id: bytes | None = None
    name: str | None = None

class CoreWorker(ObjectAccess, RefCounting):
    """Ownership, object access and the I/O loop of one process.

    Object access (``objects``) and reference counting (``refcount``) are
    parts of this class, split by concern; task submission, actor
    submission and execution are separate objects that ``start_driver`` /
    ``start_worker`` (this package) attach as ``submitter``, ``actors`` and
    ``executor`` before the first connection is made.
    """

    def __init__(
        self,
        mode: str,
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
        #: The runtime_env tasks and actors submitted here start from (resolved;
        #: see skate._private.runtime_env.submit): the job's, or this worker's own.
        self.runtime_env: dict = {}
        self.closed = False
        self.closing = False
        self.store = MemoryStore(self._on_free, self._on_borrow_change, lambda fn: self.post(fn))
        self.lineage = Lineage(self)
        self.ctx = TaskThreadContext()
        self.conns: dict[bytes, asyncio.Future] = {}
        self.gcs_fut: asyncio.Future | None = None
        self.pid = os.getpid()
        self._put_counter = itertools.count(1)
        self._put_prefix = ids.new_id(12)
        self._task_counter = itertools.count(1)
        self._task_prefix = ids.new_id(8)
        self._borrow_out: dict[bytes, list] = {}
        self._unborrow_out: dict[bytes, list] = {}
        self.borrows_inflight = 0
        #: Borrows of task arguments not announced yet (see RefCounting._on_borrow_change).
        self.deferred_borrows: dict[bytes, list] = {}
        self.deferred_lock = threading.Lock()
        self.arg_scope = threading.local()  # ``on`` while this thread decodes a task's arguments
        #: (adding, oid, owner) for the I/O thread to batch per owner (see RefCounting._post_borrow_change)
        self.borrow_changes: list[tuple] = []
        self.borrow_changes_posted = False
        self.borrow_changes_lock = threading.Lock()
        self._borrows_idle: asyncio.Event | None = None
        self._frees: list = []
        self._frees_lock = threading.Lock()
        self._unmaps: list = []  # segments this process stopped mapping, sent in batches
        self._unmaps_lock = threading.Lock()
        self._wmaps: collections.OrderedDict = collections.OrderedDict()
        self.slab_reader = slab.SlabReader()
        self._nodes: dict[bytes, dict] = {}
        self.extra_sockets: list[str] = []
        #: object id -> callback (I/O thread) run once the object is freed everywhere.
        self.free_hooks: dict[bytes, Callable] = {}
        #: True for a driver on a host with no node daemon of the cluster.
        self.off_node = False
        #: The last lines this process printed for the cluster (worker output,
        #: warnings, unhandled errors), after they were flushed; for tests.
        self.printed: collections.deque[str] = collections.deque(maxlen=2000)
        self.log_to_driver = log_to_driver
        self.handlers: dict[str, Callable] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")
        }
        self.handlers["reconstruct_object"] = self.lineage.on_reconstruct_object
        self.loop = daemon.new_loop()
        self.io_thread = threading.Thread(target=self._run_loop, name="skate-io", daemon=True)
        self.io_thread.start()
        self.submitter: Any = None
        self.actors: Any = None
        self.executor: Any = None
        #: Generator tasks this process submitted, by task id (see ``streams``).
        self.streams: dict[bytes, Any] = {}
        self.dropped_streams: dict[bytes, Any] = {}  # generator task -> its worker's address: dropped while it ran
        self.task_events = TaskEventBuffer(self)
        self.waits = WaitReporter(self)  # blocked calls, for the dashboard

    def connect(self, raylet_socket: str) -> None:
        """Connects to this node's daemon and starts serving peers (blocking)."""
        self.call(self._connect(raylet_socket), timeout=30)

    # --- the loop ---------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # The loop's default executor (name lookups) ends with it: a process
        # that starts and shuts down many times keeps no idle threads.
        self.loop.run_until_complete(self.loop.shutdown_default_executor())

    def post(self, fn: Callable, *args: Any) -> None:
        """Runs ``fn(*args)`` on the I/O thread soon."""
        self.loop.call_soon_threadsafe(fn, *args)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Runs a coroutine on the I/O thread and waits for its result."""
        if threading.current_thread() is self.io_thread:
            raise RuntimeError("blocking call from the I/O thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, conn: wire.Connection, method: str, body: Any = None, bufs: Any = (), timeout: float | None = None) -> Any:
        """A blocking request on ``conn`` from a user thread."""

        async def go() -> Any:
            return await conn.request(method, body, bufs)

        return self.call(go(), timeout)

    async def _connect(self, raylet_socket: str) -> None:
        self._borrows_idle = asyncio.Event()
        self._borrows_idle.set()
        self.server_uds = os.path.join(self.session_dir, f"w-{self.worker_id.hex()[:16]}.sock")
        self.raylet = await wire.connect(raylet_socket, self.token, self.handlers)
        self.raylet.on_close.append(self._raylet_lost)
        if self.mode == DRIVER:
            self._set_node(await self.raylet.request("register_client", {"worker_id": self.worker_id}))
            if not isinstance(raylet_socket, str):
                # No node daemon on this host: listen on this host's address
                # that routes to the node (never on the node's own address).
                self.off_node = True
                self.node_ip = hostaddr.route_ip(raylet_socket[0])
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
        self._uds_server = await wire.serve_unix(self.server_uds, self.token, self.handlers, identity=self.worker_id)
        self._tcp_server = await hostaddr.serve_in_range(
            lambda port: wire.serve_tcp(self.node_ip, port, self.token, self.handlers, identity=self.worker_id),
            hostaddr.worker_port_range(),
        )
        port = self._tcp_server.sockets[0].getsockname()[1]
        self.address = [self.worker_id, self.node_ip, port, self.server_uds]

    def _raylet_lost(self, conn: wire.Connection) -> None:
        if not self.closed and self.mode == WORKER:
            # Without its node daemon a worker has nothing to do.
            os._exit(1)

    # --- connections to peers -----------------------------------------------------
    async def conn_to(self, addr: list, exec_: bool = False) -> wire.Connection:
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
            target = hostaddr.local_target(addr[3], addr[1], addr[2])
            conn = await wire.connect(target, self.token, self.handlers, expect=addr[0])
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

    def _conn_closed(self, wid: bytes, conn: wire.Connection) -> None:
        fut = self.conns.get(wid)
        if fut is not None and fut.done() and not fut.exception() and fut.result() is conn:
            del self.conns[wid]

    def on_hello(self, conn: wire.Connection, addr: list, bufs: list) -> None:
        conn.peer = addr
        wid = addr[0]
        if wid not in self.conns:
            fut = self.loop.create_future()
            fut.set_result(conn)
            self.conns[wid] = fut
            conn.on_close.append(lambda c, wid=wid: self._conn_closed(wid, c))

    async def gcs(self) -> GcsClient:
        """The link to the control store (made on first use; it waits out restarts
        of a control store with durable tables)."""
        fut = self.gcs_fut
        if fut is None or (fut.done() and (fut.exception() or fut.result().given_up)):
            client = GcsClient(self.gcs_address, self.token, self.handlers, session_dir=self.session_dir)
            fut = self.gcs_fut = asyncio.ensure_future(client.connect(timeout=10.0))
        return await asyncio.shield(fut)

    def gcs_call(self, method: str, body: Any = None, bufs: Any = (), timeout: float = 60) -> Any:
        """A blocking request to the control store from a user thread."""

        async def go() -> Any:
            return await (await self.gcs()).request(method, body, bufs)

        try:
            return self.call(go(), timeout)
        except wire.RemoteError as e:
            raise remote_to_local(e) from None

    # --- notifications from daemons --------------------------------------------------
    def on_warning(self, conn: wire.Connection, text: str, bufs: list) -> None:
        print(f"Warning: {text}", file=sys.stderr, flush=True)
        self.printed.append(f"Warning: {text}")

    async def _close_peers_on(self, node: dict) -> None:
        """Closes this process's connections to processes on ``node``, declared
        dead: a host that is cut off closes none itself, and a request on one
        (an object's value asked of its owner there) would wait forever; closed,
        it fails as if that process had died (``OwnerDiedError``).  Only when
        the node's address is its own: no live node shares it."""
        ip = node.get("ip")
        if not ip or ip == self.node_ip:
            return

        def there() -> list:
            return [
                f.result() for f in list(self.conns.values())
                if f.done() and not f.cancelled() and f.exception() is None
                and (getattr(f.result(), "peer", None) or (None, None))[1] == ip
            ]  # fmt: skip

        if not there():  # (no question to the control store for nothing)
            return
        try:
            nodes = await (await self.gcs()).request("get_nodes")
        except Exception:  # noqa: BLE001 - the control store is away: its next word decides
            return
        if any(n.get("alive") and n.get("ip") == ip for n in nodes):
            return
        for conn in there():
            conn.close()

    def on_pub(self, conn: wire.Connection, body: list, bufs: list) -> None:
        channel, msg = body
        if channel == "node":
            if not msg.get("alive", True) and self.submitter is not None:
                self.submitter.node_died(msg)
                if self.actors is not None:
                    self.actors.node_died(msg["node_id"])
                asyncio.ensure_future(self._close_peers_on(msg))
            return
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

    def on_gen_item(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        streams.on_item(self, body, bufs, conn)

    def on_ping(self, conn: wire.Connection, body: Any, bufs: list) -> str:
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
        self.io_thread.join(timeout=5)
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
        if self.mode == DRIVER:
            await self.actors.close()  # graceful ends: the actors' shutdown hooks run
        if self.mode == DRIVER and self.log_to_driver:
            try:
                await asyncio.wait_for(self._drain_logs(), 2)
            except Exception:  # noqa: BLE001 - best effort: the cluster may be gone
                pass
        if (self.task_events.events or self.task_events.running or self.task_events.watched) and self.gcs_fut is not None:
            try:  # how this process's tasks ended, before it goes
                await asyncio.wait_for(self.task_events.send(), 2)
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


