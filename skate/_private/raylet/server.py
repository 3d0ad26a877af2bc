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
from typing import Any

from skate._private import daemon, logs, private_paths, wire
from skate._private.config import CONFIG
from skate._private.gcs.client import GcsClient
from skate._private.object_store import sweep
from skate._private.object_store.store import ObjectStore
from skate._private.raylet import log_files
from skate._private.raylet.bundles import BundleManager
from skate._private.raylet.leases import Lease, LeaseManager
from skate._private.raylet.object_manager import ObjectManager
from skate._private.raylet.scheduler import LocalScheduler
from skate._private.raylet.transfer import ChunkBudget
from skate._private.raylet.worker_pool import Worker, WorkerPool
from skate._private.raylet.worker_pool import signal_pid as _kill

log = logging.getLogger(__name__)


class Raylet(LeaseManager, ObjectManager, BundleManager):
    """The node daemon: its state, start-up, registration and logs.

    Leases (``leases``), objects (``object_manager``) and placement-group
    bundles (``bundles``) are parts of this class, split by concern; its
    handler table is every ``on_*`` method.
    """

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
        self.leases_granted = 0  # since start (node_stats)
        self.waiting: dict[int, asyncio.Future] = {}
        self.gcs: GcsClient | None = None
        self.peers: dict[bytes, dict] = {}  # node_id -> node info from the control store
        self.peer_conns: dict[bytes, asyncio.Future] = {}
        self.pulls: dict[bytes, asyncio.Future] = {}
        self.pulled_by: dict[bytes, set[bytes]] = {}
        self.pull_budget = ChunkBudget()  # chunks in flight for all pulls (see ``transfer``)
        self.restores: dict[bytes, asyncio.Future] = {}  # spilled objects being copied back
        self.owner_of: dict[bytes, bytes] = {}  # object id -> its owner's worker id
        self.owned: dict[bytes, set[bytes]] = {}  # owner's worker id -> its objects here
        self.owner_watches: dict[bytes, asyncio.Future] = {}
        self.owner_conns: dict[bytes, wire.Connection] = {}
        self.log_batch: list = []
        self.port = 0
        self.stopping = asyncio.Event()
        self.pool = WorkerPool({}, logs.tee_worker_output(self._on_output))
        self.pool.on_exit = self._on_worker_exit
        self.handlers = {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")}
        self.gcs_handlers = {
            "pub": self._on_pub, "shutdown": lambda c, b, bufs: self.stopping.set(), **self.bundle_handlers(),
        }

    # --- start / stop -------------------------------------------------------------
    async def start(self) -> None:
        # Should we die without cleaning up, the next sweep removes our segments.
        self.store_record = sweep.record_store(self.session_dir, self.prefix, os.getpid())
        self.uds_server = await wire.serve_unix(self.uds, self.token, self.handlers, identity=self.node_id)
        self.tcp_server = await wire.serve_tcp(self.ip, self.args.port, self.token, self.handlers, identity=self.node_id)
        self.port = self.tcp_server.sockets[0].getsockname()[1]
        # Workers read the token from the (owner-only) token file: in their
        # environment every subprocess of a task would inherit it.
        self.pool.env = dict(
            private_paths.environ_without_secrets(),
            SKATE_RAYLET_SOCKET=self.uds,
            SKATE_NODE_ID=self.node_id.hex(),
            SKATE_NODE_IP=self.ip,
            SKATE_GCS_ADDRESS=self.args.gcs_address,
            SKATE_TOKEN_FILE=self.args.token_file,
            SKATE_SESSION_DIR=self.session_dir,
            SKATE_STORE_PREFIX=self.prefix,
            SKATE_MIN_WORKER_PORT=str(self.args.min_worker_port),
            SKATE_MAX_WORKER_PORT=str(self.args.max_worker_port),
        )
        # Workers boot while we register with the control store.
        n = CONFIG.prestart_workers
        if n < 0:
            n = min(int(self.resources["CPU"]), 4)
        for _ in range(n):
            asyncio.ensure_future(self._start_idle_worker())
        # A control store with durable tables may restart: the client then
        # reconnects, and we register again; otherwise losing it ends us.
        self.gcs = GcsClient(
            self.args.gcs_address, self.token, self.gcs_handlers,
            on_reconnect=self._gcs_reconnected, on_lost=self._gcs_lost, session_dir=self.session_dir,
        )
        await self.gcs.connect(timeout=15.0)
        reply = await self.gcs.request("register_node", self.info())
        for n in reply["nodes"]:
            self._update_peer(n)
        await self.gcs.request("subscribe", ["node", "resources"])
        self.bg = [asyncio.ensure_future(self._heartbeat())]

    async def _gcs_reconnected(self, gcs: GcsClient) -> None:
        reply = await gcs.conn.request("register_node", self.info())
        for n in reply["nodes"]:
            self._update_peer(n)
        log.warning("node %s registered again with the restarted control store", self.node_id.hex()[:12])

    def _gcs_lost(self, why: str) -> None:
        # Without durable tables the control store going away is how a
        # cluster ends (it is stopped first): no alarm then.
        if not self.stopping.is_set() and self.gcs is not None and self.gcs.durable:
            log.error("node daemon exits: %s", why)
        self.stopping.set()

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
        for conn in list(self.owner_conns.values()):
            conn.close()
        await self.pool.stop_all()
        self.store.clear()
        sweep.remove_segments(self.prefix)  # segments of readers' zombies, if any
        try:
            os.unlink(self.store_record)
        except FileNotFoundError:
            pass
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
        """Reports changed free resources (versioned deltas) soon, and liveness every ``heartbeat_s``."""
        sent: dict = {}
        version = 0
        last = 0.0
        while True:
            now = time.monotonic()
            avail = self._available()
            changed = {k: v for k, v in avail.items() if sent.get(k) != v}
            if changed or now - last >= CONFIG.heartbeat_s:
                body: dict = {"node_id": self.node_id}
                if changed:
                    version += 1
                    body.update(version=version, available=changed, full=not sent)
                    sent = avail
                self.gcs.notify("heartbeat", body, droppable=True)
                last = now
                self._reap_idle()
            await asyncio.sleep(CONFIG.resource_report_s)

    def _available(self) -> dict:
        return {k: max(v, 0.0) for k, v in self.sched.available.items()}

    def _reap_idle(self) -> None:
        cap = max(int(self.resources["CPU"]), 1)
        now = time.monotonic()
        while len(self.pool.idle) > cap and now - self.pool.idle[0].idle_since > CONFIG.idle_worker_s:
            w = self.pool.idle.popleft()
            _kill(w.pid, signal.SIGTERM)

    # --- cluster view -------------------------------------------------------------
    def _on_pub(self, conn: wire.Connection, body: list, bufs: list) -> None:
        channel, msg = body
        if channel == "node":
            self._update_peer(msg)
            if not msg["alive"]:
                # Workers submit tasks too (nested ones): they give up that
                # node's workers as drivers do, and retry elsewhere.
                for w in self.pool.workers.values():
                    if w.conn is not None and not w.conn.closed:
                        w.conn.notify("pub", body)
        elif channel == "resources":
            for node_id, version, changed in msg:
                peer = self.peers.get(node_id)
                if peer is not None and version > peer.get("version", 0):
                    peer["version"] = version
                    peer["available"] = {**peer.get("available", peer["resources"]), **changed}
                    self.sched.update_node(node_id, peer["resources"], peer["available"], peer["alive"])
        self._schedule()

    def _update_peer(self, n: dict) -> None:
        self.peers[n["node_id"]] = n
        self.sched.update_node(n["node_id"], n["resources"], n.get("available", n["resources"]), n["alive"])

    # --- registration -----------------------------------------------------------------
    def on_register_worker(self, conn: wire.Connection, body: dict, bufs: list) -> dict:
        w = self.pool.registered(body["worker_id"], body["address"], conn)
        if w is None:
            raise ValueError("unknown worker")
        conn.peer = w
        return self._client_info()

    def on_register_client(self, conn: wire.Connection, body: dict, bufs: list) -> dict:
        return self._client_info()

    def _client_info(self) -> dict:
        return {
            "node_id": self.node_id,
            "ip": self.ip,
            "store_prefix": self.prefix,
            "gcs_address": self.args.gcs_address,
            "resources": self.resources,
        }

    def on_node_stats(self, conn: wire.Connection, body: Any, bufs: list) -> dict:
        return {
            "store": self.store.stats(),
            "workers": len(self.pool.workers),
            "idle": len(self.pool.idle),
            "leases": len(self.leases),
            "leases_granted": self.leases_granted,
            "available": self._available(),
            "pids": [w.pid for w in self.pool.workers.values()],
            # Queued lease requests: [resources, infeasible (no node has that much)].
            "demands": [[req.placement, req.warned] for req in self.sched.queue],
            "owners": len(self.owned),
            "host": _host_stats(),
        }

    def on_list_workers(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return [{"worker_id": w.worker_id, "pid": w.pid, "address": w.address, "actor_id": w.actor_id,
                 "leased": w.lease is not None, "alive": w.exit_info is None}
                for w in self.pool.workers.values()]

    def on_log_list(self, conn: wire.Connection, glob: str, bufs: list) -> list:
        return log_files.list_files(os.environ.get(logs.ENV), glob)

    def on_log_read(self, conn: wire.Connection, body: dict, bufs: list) -> dict:
        return log_files.read(os.environ.get(logs.ENV), body)

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

    async def on_flush_logs(self, conn: wire.Connection, body: Any, bufs: list) -> bool:
        """Publishes every line workers printed so far (a driver about to leave)."""
        await self.pool.drain_output()
        if self.log_batch and self.gcs is not None:
            batch, self.log_batch = self.log_batch, []
            # A request: the control store has sent the lines to subscribers when it answers.
            await self.gcs.request("publish", ["logs", batch])
        return True


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
    ap.add_argument("--min-worker-port", type=int, default=0)
    ap.add_argument("--max-worker-port", type=int, default=0)
    args = ap.parse_args()
    token = private_paths.read_token(args.token_file)
    raylet = Raylet(args, token)
    raylet.pool.early_zygote = _EARLY_ZYGOTE
    await raylet.start()
    daemon.report_ready({"node_id": raylet.node_id.hex(), "port": raylet.port, "uds": raylet.uds})
    stopper = asyncio.ensure_future(raylet.stopping.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), stopper], return_when=asyncio.FIRST_COMPLETED)
    raylet.stopping.set()
    await raylet.stop()


def _host_stats() -> dict:
    """This host's CPU use (percent since the last call) and memory (bytes), for the dashboard."""
    import psutil

    vm = psutil.virtual_memory()
    return {"cpu_percent": psutil.cpu_percent(None), "cpu_count": os.cpu_count() or 1,
            "mem_total": vm.total, "mem_used": vm.total - vm.available}


_EARLY_ZYGOTE = None

if __name__ == "__main__":
    from skate._private.raylet import zygote

    daemon.raise_fd_limit()  # before the zygote forks: workers inherit it
    _EARLY_ZYGOTE = zygote.fork_early()
    daemon.run(_main)

