"""The node daemon ("raylet"): one per node.

It owns the node's resources, its worker processes and its shared-memory
store.  Data flow:

* a submitter asks for a **lease** (``request_lease``); the scheduler grants
  a worker here, or answers with another node to ask (spillback); the
  submitter then pushes tasks straight to the leased worker and gives the
  lease back when it has nothing more for it;
* a worker blocked in ``get`` tells the daemon, which lends its CPU to
  other work until it is back;
* producers ``obj_reserve`` space, write a segment, ``obj_seal`` it; readers
  ``obj_get`` it, which restores spilled objects and pulls objects made on
  other nodes (``obj_fetch`` between daemons); owners ``obj_free`` them;
* worker output lines are published on the control store's ``logs`` channel;
* heartbeats carry the free resources to the control store, and the
  cluster view coming back feeds spillback decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from skate._private import daemon, logs, rpc
from skate._private.config import CONFIG
from skate._private.object_store.store import ObjectStore, StoreFull
from skate._private.raylet.scheduler import LeaseRequest, LocalScheduler
from skate._private.raylet.worker_pool import Worker, WorkerPool
from skate._private.raylet.worker_pool import signal_pid as _kill

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A worker lent to a submitter together with some resources."""

    lease_id: int
    worker: Worker
    resources: dict
    holder: rpc.Connection | None
    actor_id: bytes | None = None
    detached: bool = False
    blocked: int = 0


class Raylet:
    """The node daemon's state and handlers."""

    def __init__(self, args: argparse.Namespace, token: bytes) -> None:
        self.args = args
        self.token = token
        self.node_id = bytes.fromhex(args.node_id) if args.node_id else os.urandom(16)
        self.ip = args.node_ip
        self.session_dir = args.session_dir
        resources = json.loads(args.resources or "{}")
        resources["CPU"] = float(args.num_cpus)
        if args.num_gpus:
            resources["GPU"] = float(args.num_gpus)
        resources["memory"] = float(args.memory)
        resources["object_store_memory"] = float(args.object_store_memory)
        resources[f"node:{self.ip}"] = 1.0
        self.resources = resources
        self.sched = LocalScheduler(self.node_id, resources)
        self.prefix = f"{CONFIG.shm_prefix}-{self.node_id.hex()[:12]}"
        self.store = ObjectStore(
            self.prefix, int(args.object_store_memory), os.path.join(self.session_dir, "spill", self.node_id.hex()[:12])
        )
        self.uds = os.path.join(self.session_dir, f"raylet-{self.node_id.hex()[:8]}.sock")
        self.leases: dict[int, Lease] = {}
        self.waiting: dict[int, asyncio.Future] = {}
        self.gcs: rpc.Connection | None = None
        self.peers: dict[bytes, dict] = {}  # node_id -> node info from the control store
        self.peer_conns: dict[bytes, asyncio.Future] = {}
        self.pulls: dict[bytes, asyncio.Future] = {}
        self.pulled_by: dict[bytes, set[bytes]] = {}
        self.log_batch: list = []
        self.port = 0
        self.stopping = asyncio.Event()
        self.pool = WorkerPool({}, logs.tee_worker_output(self._on_output))
        self.pool.on_exit = self._on_worker_exit
        self.handlers = {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")}
        self.gcs_handlers = {"pub": self._on_pub, "shutdown": lambda c, b, bufs: self.stopping.set()}

    # --- start / stop -------------------------------------------------------------
    async def start(self) -> None:
        self.uds_server = await rpc.serve_unix(self.uds, self.token, self.handlers)
        self.tcp_server = await rpc.serve_tcp(self.ip, self.args.port, self.token, self.handlers)
        self.port = self.tcp_server.sockets[0].getsockname()[1]
        self.pool.env = dict(
            os.environ,
            SKATE_RAYLET_SOCKET=self.uds,
            SKATE_NODE_ID=self.node_id.hex(),
            SKATE_NODE_IP=self.ip,
            SKATE_GCS_ADDRESS=self.args.gcs_address,
            SKATE_TOKEN=self.token.decode(),
            SKATE_SESSION_DIR=self.session_dir,
            SKATE_STORE_PREFIX=self.prefix,
        )
        # Workers boot while we register with the control store.
        n = CONFIG.prestart_workers
        if n < 0:
            n = min(int(self.resources["CPU"]), 4)
        for _ in range(n):
            asyncio.ensure_future(self._start_idle_worker())
        self.gcs = await _connect_retrying(self.args.gcs_address, self.token, self.gcs_handlers)
        self.gcs.on_close.append(lambda c: self.stopping.set())
        reply = await self.gcs.request("register_node", self.info())
        for n in reply["nodes"]:
            self._update_peer(n)
        await self.gcs.request("subscribe", ["node", "resources"])
        self.bg = [asyncio.ensure_future(self._heartbeat())]

    def info(self) -> dict:
        return {
            "node_id": self.node_id,
            "ip": self.ip,
            "port": self.port,
            "uds": self.uds,
            "resources": self.resources,
            "store_prefix": self.prefix,
            "pid": os.getpid(),
            "session_dir": self.session_dir,
            "is_head": self.args.head,
            "labels": json.loads(self.args.labels),
        }

    async def stop(self) -> None:
        for t in self.bg:
            t.cancel()
        self.uds_server.close()
        self.tcp_server.close()
        await self.pool.stop_all()
        self.store.clear()
        if self.gcs is not None:
            self.gcs.close()
        try:
            os.unlink(self.uds)
        except FileNotFoundError:
            pass

    async def _start_idle_worker(self) -> None:
        try:
            w = await self.pool.start()
        except Exception as e:
            if not self.stopping.is_set():
                log.error("could not start a worker: %s", e)
            return
        if w.lease is None and w.exit_info is None:
            w.idle_since = time.monotonic()
            self.pool.idle.append(w)
            self._schedule()

    async def _heartbeat(self) -> None:
        while True:
            self.gcs.notify("heartbeat", {"node_id": self.node_id, "available": self._available()})
            self._reap_idle()
            await asyncio.sleep(CONFIG.heartbeat_s)

    def _available(self) -> dict:
        return {k: max(v, 0.0) for k, v in self.sched.available.items()}

    def _reap_idle(self) -> None:
        cap = max(int(self.resources["CPU"]), 1)
        now = time.monotonic()
        while len(self.pool.idle) > cap and now - self.pool.idle[0].idle_since > CONFIG.idle_worker_s:
            w = self.pool.idle.popleft()
            _kill(w.pid, signal.SIGTERM)

    # --- cluster view -------------------------------------------------------------
    def _on_pub(self, conn: rpc.Connection, body: list, bufs: list) -> None:
        channel, msg = body
        if channel == "node":
            self._update_peer(msg)
        elif channel == "resources":
            peer = self.peers.get(msg["node_id"])
            if peer is not None:
                peer["available"] = msg["available"]
                self.sched.update_node(peer["node_id"], peer["resources"], peer["available"], peer["alive"])
        self._schedule()

    def _update_peer(self, n: dict) -> None:
        self.peers[n["node_id"]] = n
        self.sched.update_node(n["node_id"], n["resources"], n.get("available", n["resources"]), n["alive"])

    # --- leases -----------------------------------------------------------------
    async def on_request_lease(self, conn: rpc.Connection, body: dict, bufs: list) -> dict:
        resources = body["resources"]
        req = LeaseRequest(
            resources=resources,
            placement=body.get("placement") or resources,
            strategy=body.get("strategy"),
            no_spill=body.get("no_spill", False),
            payload=(conn, body),
        )
        fut = asyncio.get_running_loop().create_future()
        self.waiting[req.id] = fut
        # A requester that goes away takes its queued request with it.
        drop = lambda c, fut=fut: fut.cancel() if not fut.done() else None  # noqa: E731
        conn.on_close.append(drop)
        self.sched.submit(req)
        self._schedule()
        try:
            return await fut
        finally:
            self.waiting.pop(req.id, None)
            if not conn.closed:
                conn.on_close.remove(drop)
            if not fut.done() or fut.cancelled():
                self.sched.cancel(req.id)

    def _schedule(self) -> None:
        again = True
        while again:
            again = self._schedule_once()

    def _schedule_once(self) -> bool:
        """One pass of decisions; True when resources came back and another pass is due."""
        freed = False
        for decision, req, arg in self.sched.schedule():
            fut = self.waiting.get(req.id)
            conn, body = req.payload
            if decision == "grant":
                if fut is None or fut.done() or conn.closed:
                    # Nobody wants it any more: what it took may fit a request
                    # this pass already left waiting.
                    self.sched.release(req.resources)
                    freed = True
                    continue
                asyncio.ensure_future(self._grant(req, fut))
            elif decision == "spill":
                peer = self.peers[arg]
                if fut is not None and not fut.done():
                    fut.set_result({"spill": {"node_id": arg, "ip": peer["ip"], "port": peer["port"], "uds": peer["uds"]}})
            elif decision == "unschedulable":
                if fut is not None and not fut.done():
                    fut.set_result({"unschedulable": arg})
            elif decision == "infeasible":
                if not conn.closed:
                    conn.notify(
                        "warning",
                        f"a task or actor needs {req.placement}, but no node in the cluster has "
                        f"that much (this node has {self.resources}); it stays pending until a node "
                        "that fits joins the cluster" + (f" ({arg})" if arg else ""),
                    )
        return freed

    async def _grant(self, req: LeaseRequest, fut: asyncio.Future) -> None:
        conn, body = req.payload
        w = None
        while self.pool.idle:
            cand = self.pool.idle.pop()
            if cand.exit_info is None:
                w = cand
                break
        if w is None:
            try:
                w = await self.pool.start()
            except Exception as e:
                self.sched.release(req.resources)
                if not fut.done():
                    fut.set_exception(e)
                return
        if fut.done() or conn.closed:
            self.sched.release(req.resources)
            w.idle_since = time.monotonic()
            self.pool.idle.append(w)
            self._schedule()
            return
        lease_id = req.id
        actor_id = body.get("actor_id")
        lease = Lease(lease_id, w, req.resources, conn, actor_id, bool(body.get("detached")))
        w.lease = lease
        w.actor_id = actor_id
        self.leases[lease_id] = lease
        if not lease.detached:
            holder_leases = getattr(conn, "leases", None)
            if holder_leases is None:
                conn.leases = holder_leases = set()
                conn.on_close.append(self._holder_gone)
            holder_leases.add(lease_id)
        fut.set_result(
            {"lease_id": lease_id, "worker_id": w.worker_id, "address": w.address, "node_id": self.node_id, "pid": w.pid}
        )

    def on_return_lease(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.pop(body["lease_id"], None)
        if lease is None:
            return
        holder_leases = getattr(lease.holder, "leases", None)
        if holder_leases:
            holder_leases.discard(lease.lease_id)
        self._release(lease)
        w = lease.worker
        w.lease = None
        if body.get("kill") or lease.actor_id or w.exit_info is not None:
            _kill(w.pid, signal.SIGKILL if body.get("kill") else signal.SIGTERM)
        else:
            w.idle_since = time.monotonic()
            self.pool.idle.append(w)
        self._schedule()

    def _release(self, lease: Lease) -> None:
        if lease.blocked:
            lease.blocked = 0
        else:
            self.sched.release(lease.resources)

    def _holder_gone(self, conn: rpc.Connection) -> None:
        for lease_id in list(getattr(conn, "leases", ())):
            lease = self.leases.pop(lease_id, None)
            if lease is None:
                continue
            self._release(lease)
            lease.worker.lease = None
            # The worker may still run work for a holder that is gone: stop it.
            _kill(lease.worker.pid, signal.SIGKILL)
        self._schedule()

    def on_lease_blocked(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.get(body["lease_id"])
        if lease is None:
            return
        lease.blocked += 1
        if lease.blocked == 1:
            self.sched.release(lease.resources)
            self._schedule()

    def on_lease_unblocked(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.get(body["lease_id"])
        if lease is None or not lease.blocked:
            return
        lease.blocked -= 1
        if lease.blocked == 0:
            self.sched.acquire(lease.resources)

    def _on_worker_exit(self, w: Worker) -> None:
        lease = w.lease
        if lease is not None:
            self.leases.pop(lease.lease_id, None)
            self._release(lease)
            w.lease = None
            self._schedule()
        if w.actor_id is not None and self.gcs is not None and not self.stopping.is_set():
            self.gcs.notify(
                "update_actor",
                {"actor_id": w.actor_id, "state": "DEAD", "cause_if_unset": f"the actor's worker process (pid={w.pid}) {w.exit_info['how']}"},
            )

    async def on_worker_exit_info(self, conn: rpc.Connection, body: dict, bufs: list) -> dict | None:
        worker_id = body["worker_id"]
        w = self.pool.workers.get(worker_id) or self.pool.dead.get(worker_id)
        if w is None:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(w.exited), body.get("timeout", 5.0))
        except asyncio.TimeoutError:
            return None
        return {"how": w.exit_info["how"], "code": w.exit_info["code"], "tail": [ln.decode(errors="replace") for ln in w.tail]}

    def on_kill_worker(self, conn: rpc.Connection, body: dict, bufs: list) -> bool:
        w = self.pool.workers.get(body["worker_id"])
        if w is None:
            return False
        _kill(w.pid, signal.SIGKILL if body.get("force", True) else signal.SIGTERM)
        return True

    # --- registration -----------------------------------------------------------------
    def on_register_worker(self, conn: rpc.Connection, body: dict, bufs: list) -> dict:
        w = self.pool.registered(body["worker_id"], body["address"], conn)
        if w is None:
            raise ValueError("unknown worker")
        conn.peer = w
        return self._client_info()

    def on_register_client(self, conn: rpc.Connection, body: dict, bufs: list) -> dict:
        return self._client_info()

    def _client_info(self) -> dict:
        return {
            "node_id": self.node_id,
            "ip": self.ip,
            "store_prefix": self.prefix,
            "gcs_address": self.args.gcs_address,
            "resources": self.resources,
        }

    def on_node_stats(self, conn: rpc.Connection, body: Any, bufs: list) -> dict:
        return {
            "store": self.store.stats(),
            "workers": len(self.pool.workers),
            "idle": len(self.pool.idle),
            "leases": len(self.leases),
            "available": self._available(),
            "pids": [w.pid for w in self.pool.workers.values()],
            # Queued lease requests: [resources, infeasible (no node has that much)].
            "demands": [[req.placement, req.warned] for req in self.sched.queue],
        }

    # --- objects ------------------------------------------------------------------------
    def on_obj_reserve(self, conn: rpc.Connection, body: dict, bufs: list) -> str:
        try:
            return self.store.reserve(body["oid"], body["size"], body.get("primary", True))
        except StoreFull as e:
            raise ObjectStoreFull(str(e)) from None

    def on_obj_seal(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        self.store.seal(body["oid"])

    async def on_obj_get(self, conn: rpc.Connection, body: dict, bufs: list) -> str:
        oid = body["oid"]
        path = self.store.ensure_local(oid)
        if path is None:
            path = await self._fetch(oid, body.get("node_id"))
        self._track_map(conn, oid)
        return path

    def _track_map(self, conn: rpc.Connection, oid: bytes) -> None:
        maps = getattr(conn, "maps", None)
        if maps is None:
            maps = conn.maps = {}
            conn.on_close.append(self._reader_gone)
        maps[oid] = maps.get(oid, 0) + 1
        self.store.map_added(oid)

    def on_obj_unmapped(self, conn: rpc.Connection, oids: list, bufs: list) -> None:
        maps = getattr(conn, "maps", {})
        for oid in oids:
            n = maps.get(oid, 0)
            if n:
                maps[oid] = n - 1
                if n == 1:
                    del maps[oid]
                self.store.map_removed(oid)

    def _reader_gone(self, conn: rpc.Connection) -> None:
        for oid, n in conn.maps.items():
            for _ in range(n):
                self.store.map_removed(oid)
        conn.maps = {}

    async def _fetch(self, oid: bytes, src: bytes | None) -> str:
        if src is None or src == self.node_id:
            raise KeyError(f"object {oid.hex()} is not in this node's store (it was freed or lost)")
        fut = self.pulls.get(oid)
        if fut is None:
            fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, src))
            fut.add_done_callback(lambda f: self.pulls.pop(oid, None))
        return await asyncio.shield(fut)

    async def _pull(self, oid: bytes, src: bytes) -> str:
        peer = await self._peer(src)
        reply = await peer.request("obj_fetch", {"oid": oid, "node_id": self.node_id})
        if not isinstance(reply, tuple):
            raise KeyError(f"object {oid.hex()} is gone from the node that held it")
        data = reply[1][0]
        path = self.store.reserve(oid, len(data), primary=False)
        from skate._private.object_store import shm

        m = shm.create(path, max(len(data), 1))
        m[: len(data)] = data
        m.close()
        self.store.seal(oid)
        return path

    async def _peer(self, node_id: bytes) -> rpc.Connection:
        fut = self.peer_conns.get(node_id)
        if fut is None or (fut.done() and (fut.exception() or fut.result().closed)):
            info = self.peers.get(node_id)
            if info is None or not info.get("alive", True):
                raise ConnectionError(f"node {node_id.hex()} is not alive")
            fut = self.peer_conns[node_id] = asyncio.ensure_future(
                rpc.connect((info["ip"], info["port"]), self.token, self.handlers)
            )
        return await asyncio.shield(fut)

    def on_obj_fetch(self, conn: rpc.Connection, body: dict, bufs: list) -> rpc.Reply:
        data = self.store.read_bytes(body["oid"])
        if data is None:
            return rpc.Reply(False)
        self.pulled_by.setdefault(body["oid"], set()).add(body["node_id"])
        return rpc.Reply(True, [data])

    def on_obj_free(self, conn: rpc.Connection, oids: list, bufs: list) -> None:
        for oid in oids:
            self.store.free(oid)
            for node_id in self.pulled_by.pop(oid, ()):
                asyncio.ensure_future(self._forward_free(node_id, oid))

    async def _forward_free(self, node_id: bytes, oid: bytes) -> None:
        try:
            peer = await self._peer(node_id)
            peer.notify("obj_free", [oid])
        except Exception:
            pass

    # --- logs -----------------------------------------------------------------------------
    def _on_output(self, w: Worker, line: bytes, is_err: bool) -> None:
        text = line.decode(errors="replace").rstrip("\n")
        if not text.startswith("("):
            text = f"(pid={w.pid}) {text}"
        self.log_batch.append([text, is_err])
        if len(self.log_batch) == 1:
            # Lines printed together travel together.
            asyncio.get_running_loop().call_later(0.01, self._flush_logs)

    def _flush_logs(self) -> None:
        if self.log_batch and self.gcs is not None:
            batch, self.log_batch = self.log_batch, []
            self.gcs.notify("publish", ["logs", batch])

    async def on_flush_logs(self, conn: rpc.Connection, body: Any, bufs: list) -> bool:
        """Publishes every line workers printed so far (a driver about to leave)."""
        await self.pool.drain_output()
        if self.log_batch and self.gcs is not None:
            batch, self.log_batch = self.log_batch, []
            # A request: the control store has sent the lines to subscribers when it answers.
            await self.gcs.request("publish", ["logs", batch])
        return True



class ObjectStoreFull(Exception):
    """Raised to a producer when no room can be made."""


async def _connect_retrying(address: str, token: bytes, handlers: dict, timeout: float = 15.0) -> rpc.Connection:
    """Connects to the control store, which may still be starting."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return await rpc.connect(address, token, handlers)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


async def _main(stop: asyncio.Event) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gcs-address", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--node-ip", default="127.0.0.1")
    ap.add_argument("--node-id", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--num-cpus", type=float, required=True)
    ap.add_argument("--num-gpus", type=float, default=0)
    ap.add_argument("--memory", type=float, default=0)
    ap.add_argument("--resources", default="{}")
    ap.add_argument("--object-store-memory", type=float, required=True)
    ap.add_argument("--head", action="store_true")
    ap.add_argument("--labels", default="{}")
    args = ap.parse_args()
    with open(args.token_file, "rb") as f:
        token = f.read().strip()
    raylet = Raylet(args, token)
    raylet.pool.early_zygote = _EARLY_ZYGOTE
    await raylet.start()
    daemon.report_ready({"node_id": raylet.node_id.hex(), "port": raylet.port, "uds": raylet.uds})
    stopper = asyncio.ensure_future(raylet.stopping.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), stopper], return_when=asyncio.FIRST_COMPLETED)
    raylet.stopping.set()
    await raylet.stop()


_EARLY_ZYGOTE = None

if __name__ == "__main__":
    from skate._private.raylet import zygote

    _EARLY_ZYGOTE = zygote.fork_early()
    daemon.run(_main)
