"""The control store (GCS): one per cluster, on the head node.

It owns the cluster's membership and names: nodes and their health and
resources, jobs, actors (state, address, names in namespaces), a key-value
table and publish/subscribe channels (node changes, resource views, worker
logs, error messages).  Node daemons keep a connection open and send
heartbeats; a closed connection or missed heartbeats declare the node dead.
Drivers and workers ask it about actors and nodes; the hot paths (task
submission, actor calls, object transfer) never pass through it.

State is in memory; a durable backend is a later addition.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from skate._private import daemon, private_paths, rpc
from skate._private.config import CONFIG

log = logging.getLogger(__name__)

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"


class GcsServer:
    """In-memory cluster tables and pub/sub."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.nodes: dict[bytes, dict] = {}
        self.node_conns: dict[bytes, rpc.Connection] = {}
        self.actors: dict[bytes, dict] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self.kv: dict[tuple[str, str], bytes] = {}
        self.subs: dict[str, set[rpc.Connection]] = {}
        self.jobs: dict[int, dict] = {}
        self.actor_waiters: dict[bytes, list[asyncio.Future]] = {}
        self.death_waiters: dict[bytes, list[asyncio.Future]] = {}
        self.handlers = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")
        }

    # --- nodes --------------------------------------------------------------
    def on_register_node(self, conn: rpc.Connection, info: dict, bufs: list) -> dict:
        node_id = info["node_id"]
        info = dict(info, alive=True, available=dict(info["resources"]), last_hb=time.monotonic())
        self.nodes[node_id] = info
        self.node_conns[node_id] = conn
        conn.peer = node_id
        conn.on_close.append(lambda c: self._node_dead(node_id, "its node daemon disconnected"))
        self._publish("node", self._public_node(info))
        return {"nodes": [self._public_node(n) for n in self.nodes.values()]}

    def on_heartbeat(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        node = self.nodes.get(body["node_id"])
        if node is None or not node["alive"]:
            return
        node["last_hb"] = time.monotonic()
        if node["available"] != body["available"]:
            node["available"] = body["available"]
            self._publish("resources", {"node_id": node["node_id"], "available": body["available"]})

    def on_get_nodes(self, conn: rpc.Connection, body: Any, bufs: list) -> list:
        return [self._public_node(n) for n in self.nodes.values()]

    def on_drain_node(self, conn: rpc.Connection, node_id: bytes, bufs: list) -> bool:
        self._node_dead(node_id, "removed")
        c = self.node_conns.pop(node_id, None)
        if c is not None:
            c.notify("shutdown")
        return True

    def _public_node(self, n: dict) -> dict:
        return {k: v for k, v in n.items() if k != "last_hb"}

    def _node_dead(self, node_id: bytes, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node["alive"]:
            return
        node["alive"] = False
        node["death_reason"] = why
        log.info("node %s dead: %s", node_id.hex(), why)
        self._publish("node", self._public_node(node))
        for aid, actor in self.actors.items():
            if actor.get("node_id") == node_id and actor["state"] != DEAD:
                self._set_actor(aid, {"state": DEAD, "cause": f"its node died ({why})"})

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(CONFIG.heartbeat_s)
            now = time.monotonic()
            for node_id, node in list(self.nodes.items()):
                if node["alive"] and now - node["last_hb"] > CONFIG.node_timeout_s:
                    self._node_dead(node_id, "missed heartbeats")

    # --- pub/sub --------------------------------------------------------------
    def on_subscribe(self, conn: rpc.Connection, channels: list, bufs: list) -> bool:
        for ch in channels:
            self.subs.setdefault(ch, set()).add(conn)
        conn.on_close.append(self._unsubscribe)
        return True

    def _unsubscribe(self, conn: rpc.Connection) -> None:
        for subs in self.subs.values():
            subs.discard(conn)

    def on_publish(self, conn: rpc.Connection, body: list, bufs: list) -> None:
        self._publish(body[0], body[1])

    def _publish(self, channel: str, msg: Any) -> None:
        for conn in list(self.subs.get(channel, ())):
            conn.notify("pub", [channel, msg])

    # --- jobs -----------------------------------------------------------------
    def on_new_job(self, conn: rpc.Connection, info: dict, bufs: list) -> int:
        job = len(self.jobs) + 1
        self.jobs[job] = dict(info, start=time.time(), alive=True)
        conn.on_close.append(lambda c: self.jobs[job].update(alive=False, end=time.time()))
        return job

    # --- actors ---------------------------------------------------------------
    def on_register_actor(self, conn: rpc.Connection, info: dict, bufs: list) -> bool:
        name, ns = info.get("name"), info.get("namespace")
        if name:
            existing = self.named.get((ns, name))
            if existing is not None and self.actors[existing]["state"] != DEAD:
                raise ValueError(
                    f"the actor name {name!r} is already taken in namespace {ns!r}; "
                    "use get_actor() to get a handle, or options(get_if_exists=True)"
                )
            self.named[(ns, name)] = info["actor_id"]
        self.actors[info["actor_id"]] = dict(info, state=PENDING, handle=bufs[0] if bufs else b"")
        return True

    def on_update_actor(self, conn: rpc.Connection, body: dict, bufs: list) -> None:
        self._set_actor(body["actor_id"], body)

    def _set_actor(self, aid: bytes, update: dict) -> None:
        actor = self.actors.get(aid)
        if actor is None:
            return
        update = dict(update)
        fallback = update.pop("cause_if_unset", None)
        if actor["state"] == DEAD and update.get("state") == DEAD:
            return  # already dead; keep the first cause
        actor.update({k: v for k, v in update.items() if k != "actor_id"})
        if fallback and not actor.get("cause"):
            actor["cause"] = fallback
        if actor["state"] == DEAD and actor.get("name"):
            key = (actor.get("namespace"), actor["name"])
            if self.named.get(key) == aid:
                del self.named[key]
        if actor["state"] == DEAD:
            for fut in self.death_waiters.pop(aid, []):
                if not fut.done():
                    fut.set_result(None)
        if actor["state"] in (ALIVE, DEAD):
            for fut in self.actor_waiters.pop(aid, []):
                if not fut.done():
                    fut.set_result(None)
        self._publish("actor", self._public_actor(actor))

    def _public_actor(self, a: dict) -> dict:
        return {k: v for k, v in a.items() if k != "handle"}

    async def on_get_actor(self, conn: rpc.Connection, body: dict, bufs: list) -> dict | None:
        aid = body["actor_id"]
        actor = self.actors.get(aid)
        if actor is None:
            return None
        if body.get("wait") and actor["state"] not in (ALIVE, DEAD):
            fut = asyncio.get_running_loop().create_future()
            self.actor_waiters.setdefault(aid, []).append(fut)
            await fut
        if body.get("until_dead") and actor["state"] != DEAD:
            fut = asyncio.get_running_loop().create_future()
            self.death_waiters.setdefault(aid, []).append(fut)
            try:
                await asyncio.wait_for(fut, 5.0)
            except asyncio.TimeoutError:
                pass
        return self._public_actor(self.actors[aid])

    def on_get_named_actor(self, conn: rpc.Connection, body: dict, bufs: list) -> rpc.Reply:
        aid = self.named.get((body["namespace"], body["name"]))
        if aid is None:
            return rpc.Reply(None)
        actor = self.actors[aid]
        return rpc.Reply(self._public_actor(actor), [actor["handle"]])

    def on_list_actors(self, conn: rpc.Connection, body: Any, bufs: list) -> list:
        return [self._public_actor(a) for a in self.actors.values()]

    def on_list_named_actors(self, conn: rpc.Connection, body: dict, bufs: list) -> list:
        return [
            {"name": name, "namespace": ns}
            for (ns, name), aid in self.named.items()
            if body.get("all_namespaces") or ns == body.get("namespace")
        ]

    # --- key-value ------------------------------------------------------------
    def on_kv_put(self, conn: rpc.Connection, body: list, bufs: list) -> bool:
        ns, key, overwrite = body
        if not overwrite and (ns, key) in self.kv:
            return False
        self.kv[(ns, key)] = bufs[0] if bufs else b""
        return True

    def on_kv_get(self, conn: rpc.Connection, body: list, bufs: list) -> rpc.Reply:
        value = self.kv.get((body[0], body[1]))
        return rpc.Reply(value is not None, [value] if value is not None else [])

    def on_kv_del(self, conn: rpc.Connection, body: list, bufs: list) -> bool:
        return self.kv.pop((body[0], body[1]), None) is not None

    def on_kv_keys(self, conn: rpc.Connection, body: list, bufs: list) -> list:
        ns, prefix = body
        return [k for (n, k) in self.kv if n == ns and k.startswith(prefix)]

    def on_ping(self, conn: rpc.Connection, body: Any, bufs: list) -> str:
        return "pong"


async def _main(stop: asyncio.Event) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--listen-fd", type=int, default=-1, help="an already bound socket to serve on")
    args = ap.parse_args()
    token = private_paths.read_token(args.token_file)
    gcs = GcsServer(token)
    if args.listen_fd >= 0:
        import socket

        sock = socket.socket(fileno=args.listen_fd)
        server = await rpc.serve_tcp(args.host, args.port, token, gcs.handlers, sock=sock)
    else:
        server = await rpc.serve_tcp(args.host, args.port, token, gcs.handlers)
    port = server.sockets[0].getsockname()[1]
    watcher = asyncio.ensure_future(gcs._watch_heartbeats())
    daemon.report_ready({"port": port})
    await stop.wait()
    watcher.cancel()
    for conn in list(gcs.node_conns.values()):
        conn.close()
    server.close()


if __name__ == "__main__":
    daemon.run(_main)
    sys.exit(0)
