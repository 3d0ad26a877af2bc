r"""The control store (GCS): one per cluster, on the head node.

It owns the cluster's membership and names: nodes and their health and
resources (``nodes``), jobs, actors with their names in namespaces
(``actors``), a key-value table, and publish/subscribe channels
(``pubsub``).  Tables live in a ``Storage`` (``storage``; in memory by
default).  Node daemons keep a connection open and send heartbeats; a closed
connection or missed heartbeats declare the node dead.  Drivers and workers
ask it about actors and nodes; the hot paths (task submission, actor calls,
object transfer) never pass through it.

::

    request --> GcsServer.on_<method> --> NodeTable / ActorDirectory / jobs / kv
                                            \--> PubSub.publish --> subscribers
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from skate._private import daemon, private_paths, wire
from skate._private.config import CONFIG
from skate._private.gcs.actor_scheduler import ActorScheduler
from skate._private.gcs.actors import DEAD, ActorDirectory, public
from skate._private.gcs.client import gcs_socket
from skate._private.gcs.job_manager import JobManager
from skate._private.gcs.nodes import NodeTable
from skate._private.gcs.placement_groups import PlacementGroupManager
from skate._private.gcs.pubsub import PubSub
from skate._private.gcs.storage import MemoryStorage, Storage, Table, open_storage
from skate._private.gcs.task_events import TaskEventTable
from skate._private.gcs.waits import WaitTable

log = logging.getLogger(__name__)


class GcsServer:
    """The control store's request handlers over its tables."""

    def __init__(self, token: bytes, storage: Storage | None = None, session_dir: str | None = None) -> None:
        self.token = token
        storage = storage if storage is not None else open_storage(None)
        self.pubsub = PubSub()
        self.actors = ActorDirectory(storage, self.pubsub.publish)
        self.nodes = NodeTable(storage, self.pubsub.publish, self._node_died)
        self.pgs = PlacementGroupManager(self.nodes, self.pubsub.publish, storage)
        self.actor_sched = ActorScheduler(storage, self.actors, self.nodes, token)
        self.actors.on_dead = self.actor_sched.forget
        self.actors.has_creation = lambda aid: aid in self.actor_sched.specs
        self.jobs = Table(storage, "jobs")
        self.kv = Table(storage, "kv")
        self.task_events = TaskEventTable()
        self.waits = WaitTable()
        self.meta = Table(storage, "meta")
        #: True when the tables outlive this process (clients then wait for
        #: a restarted control store instead of giving up).
        self.durable = not isinstance(storage, MemoryStorage)
        # Jobs alive when a previous incarnation died: their drivers have
        # until ``node_timeout_s`` to reattach, or the jobs are over.
        self.unclaimed_jobs = {job for job, r in self.jobs.items() if r.get("alive")}
        self.started = time.monotonic()
        #: Requests and notifications received so far (``gcs_stats``).
        self.received = 0
        self.job_manager = JobManager(storage, self.kv, self.jobs, token, session_dir, self._head_node)
        self.handlers = {
            name[3:]: self._counted(getattr(self, name)) for name in dir(self) if name.startswith("on_")
        }
        self.handlers.update({k: self._counted(h) for k, h in self.job_manager.handlers().items()})

    def _head_node(self) -> dict | None:
        return next((n for n in self.nodes.all() if n.get("is_head") and n.get("alive")), None)

    def _counted(self, handler: Any) -> Any:
        def counted(conn: wire.Connection, body: Any, bufs: list) -> Any:
            self.received += 1
            return handler(conn, body, bufs)

        return counted

    # --- nodes --------------------------------------------------------------
    def on_register_node(self, conn: wire.Connection, info: dict, bufs: list) -> dict:
        nodes = self.nodes.register(conn, info)
        self.pgs.node_registered(info["node_id"])  # (its bundles; waiting groups may fit now)
        return {"nodes": nodes}

    def _node_died(self, node_id: bytes, why: str) -> None:
        self.actors.node_died(node_id, why)
        self.pgs.node_died(node_id)

    def on_heartbeat(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        self.nodes.heartbeat(body["node_id"], body.get("available"), body.get("version", 0), body.get("full", False))

    def on_get_nodes(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return self.nodes.all()

    def on_drain_node(self, conn: wire.Connection, node_id: bytes, bufs: list) -> bool:
        self.nodes.drain(node_id)
        return True

    # --- pub/sub --------------------------------------------------------------
    def on_subscribe(self, conn: wire.Connection, channels: list, bufs: list) -> bool:
        self.pubsub.subscribe(conn, channels)
        return True

    def on_publish(self, conn: wire.Connection, body: list, bufs: list) -> None:
        self.pubsub.publish(body[0], body[1])

    # --- jobs -----------------------------------------------------------------
    def on_new_job(self, conn: wire.Connection, info: dict, bufs: list) -> int:
        """A new job for a driver; with ``job_id``, a driver reattaching after a restart."""
        job = info.get("job_id")
        record = self.jobs.get(job) if job is not None else None
        if record is None:
            job = max(self.meta.get("last_job") or 0, len(self.jobs)) + 1
            self.meta.set("last_job", job)
            record = {"driver_pid": info["driver_pid"], "namespace": info["namespace"], "start": time.time()}
        if info.get("address"):
            record["address"] = info["address"]
        record.update(alive=True, end=None)
        self.jobs.set(job, record)
        self.unclaimed_jobs.discard(job)

        def ended(c: wire.Connection) -> None:
            self._end_job(job)

        conn.on_close.append(ended)
        self.job_manager.driver_started(job, info["driver_pid"])
        return job

    def _end_job(self, job: int) -> None:
        record = self.jobs.get(job)
        if record is not None and record.get("alive"):
            record.update(alive=False, end=time.time())
            self.jobs.set(job, record)
            self.pgs.job_ended(job)

    def on_gcs_info(self, conn: wire.Connection, body: Any, bufs: list) -> dict:
        return {"durable": self.durable}

    def on_gcs_stats(self, conn: wire.Connection, body: Any, bufs: list) -> dict:
        """Message counts since start, for measuring the control plane's cost."""
        return {"received": self.received, "published": self.pubsub.sent}

    # --- bounded history ------------------------------------------------------------
    async def keep_tidy(self) -> None:
        """Ends unclaimed jobs after a restart and purges old records (runs forever)."""
        while True:
            await asyncio.sleep(1.0)
            if self.unclaimed_jobs and time.monotonic() - self.started > CONFIG.node_timeout_s:
                for job in self.unclaimed_jobs:
                    self._end_job(job)
                self.unclaimed_jobs.clear()
            self.trim()

    def trim(self) -> None:
        """Purges the oldest dead actors, finished jobs and dead nodes beyond their limits."""
        self.actors.actors.trim(lambda r: r["state"] == DEAD, CONFIG.max_dead_actors, "dead_at")
        self.jobs.trim(lambda r: not r.get("alive"), CONFIG.max_finished_jobs, "end")
        self.nodes.nodes.trim(lambda r: not r["alive"], CONFIG.max_dead_nodes, "dead_at")

    # --- actors ---------------------------------------------------------------
    def on_register_actor(self, conn: wire.Connection, info: dict, bufs: list) -> bool:
        self.actors.register(info, bufs[0] if bufs else b"")
        if conn is None:  # (called directly, as by a test of the tables)
            return True
        owned = getattr(conn, "owned_actors", None)
        if owned is None:
            owned = conn.owned_actors = []
            conn.on_close.append(lambda c: self.actors.owner_gone(c.owned_actors))
        owned.append(info["actor_id"])
        return True

    async def on_schedule_actor(self, conn: wire.Connection, body: dict, bufs: list) -> wire.Reply:
        """Creates a registered actor (see ``actor_scheduler``); answers when it is up or failed."""
        return await self.actor_sched.schedule(conn, body, bufs)

    def on_update_actor(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        before = self.actors.actors.get(body["actor_id"])
        kill = body.pop("kill", False) and before is not None and before["state"] != DEAD
        self.actors.update(body["actor_id"], body)
        if kill:  # skate.kill(): its process ends too, even mid-constructor
            self.actor_sched.kill(body["actor_id"])

    async def on_get_actor(self, conn: wire.Connection, body: dict, bufs: list) -> dict | None:
        return await self.actors.get(
            body["actor_id"], body.get("wait", False), body.get("until_dead", False), body.get("min_restarts", 0), body.get("timeout", 30.0)
        )

    def on_get_named_actor(self, conn: wire.Connection, body: dict, bufs: list) -> wire.Reply:
        actor = self.actors.by_name(body["namespace"], body["name"])
        if actor is None:
            return wire.Reply(None)
        return wire.Reply(public(actor), [actor["handle"]])

    def on_list_actors(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return [public(a) for a in self.actors.actors.values()]

    def on_list_named_actors(self, conn: wire.Connection, body: dict, bufs: list) -> list:
        return self.actors.names(body.get("namespace"), bool(body.get("all_namespaces")))

    # --- placement groups (placement_groups) ------------------------------------
    def on_create_placement_group(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        return self.pgs.create(body, conn)

    def on_remove_placement_group(self, conn: wire.Connection, pg_id: bytes, bufs: list) -> bool:
        return self.pgs.remove(pg_id)

    async def on_wait_placement_group(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        return await self.pgs.wait(body["pg_id"], body.get("timeout"))

    def on_get_placement_group(self, conn: wire.Connection, body: dict, bufs: list) -> dict | None:
        return self.pgs.get(body)

    def on_list_placement_groups(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return self.pgs.all()

    # --- key-value ------------------------------------------------------------
    def on_kv_put(self, conn: wire.Connection, body: list, bufs: list) -> bool:
        ns, key, overwrite = body
        if not overwrite and (ns, key) in self.kv:
            return False
        self.kv.set((ns, key), bufs[0] if bufs else b"")
        return True

    def on_kv_get(self, conn: wire.Connection, body: list, bufs: list) -> wire.Reply:
        value = self.kv.get((body[0], body[1]))
        return wire.Reply(value is not None, [value] if value is not None else [])

    def on_kv_del(self, conn: wire.Connection, body: list, bufs: list) -> bool:
        return self.kv.delete((body[0], body[1])) is not None

    def on_kv_keys(self, conn: wire.Connection, body: list, bufs: list) -> list:
        ns, prefix = body
        return [k for (n, k), _ in self.kv.items() if n == ns and k.startswith(prefix)]

    # --- task events ------------------------------------------------------------
    def on_task_events(self, conn: wire.Connection, batch: dict, bufs: list) -> None:
        self.task_events.add(batch)

    def on_list_task_events(self, conn: wire.Connection, body: dict, bufs: list) -> list:
        return self.task_events.query(body.get("filters"), body.get("limit"))

    # --- blocked calls (the dashboard's "what is waiting on what") ----------------
    def on_report_waits(self, conn: wire.Connection, report: dict, bufs: list) -> None:
        self.waits.add(report)

    def on_list_waits(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return self.waits.list()

    def on_list_jobs(self, conn: wire.Connection, body: Any, bufs: list) -> list:
        return [dict(job, job_id=k) for k, job in self.jobs.items()]

    def on_ping(self, conn: wire.Connection, body: Any, bufs: list) -> str:
        return "pong"


async def _main(stop: asyncio.Event) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--storage", default=None, help="where tables live (default: memory)")
    ap.add_argument("--listen-fd", type=int, default=-1, help="an already bound socket to serve on")
    args = ap.parse_args()
    token = private_paths.read_token(args.token_file)
    from skate._private.gcs.redis_storage import namespace_for

    gcs = GcsServer(token, open_storage(args.storage, namespace_for(token)), os.path.dirname(args.token_file))
    if args.listen_fd >= 0:
        import socket

        sock = socket.socket(fileno=args.listen_fd)
        server = await wire.serve_tcp(args.host, args.port, token, gcs.handlers, sock=sock, identity=wire.GCS_IDENTITY)
    else:
        server = await wire.serve_tcp(args.host, args.port, token, gcs.handlers, identity=wire.GCS_IDENTITY)
    port = server.sockets[0].getsockname()[1]
    # This host's clients dial the Unix socket (see gcs/client.py).
    uds = gcs_socket(os.path.dirname(args.token_file))
    uds_server = await wire.serve_unix(uds, token, gcs.handlers, identity=wire.GCS_IDENTITY)
    gcs.job_manager.address = f"{args.host}:{port}"
    watcher = asyncio.gather(
        gcs.nodes.watch_heartbeats(), gcs.keep_tidy(), gcs.nodes.broadcast_resources(), gcs.pgs.run(),
        gcs.job_manager.watch(),
    )
    gcs.actor_sched.resume()
    daemon.report_ready({"port": port})
    await stop.wait()
    watcher.cancel()
    gcs.job_manager.stop_all()
    gcs.actor_sched.close()
    for conn in list(gcs.nodes.conns.values()):
        conn.close()
    server.close()
    uds_server.close()
    try:
        os.unlink(uds)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    daemon.run(_main)
    sys.exit(0)
