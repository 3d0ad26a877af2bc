"""The node table of the control store: membership, health and free resources.

::

    register_node -> alive; publishes "node"
    heartbeat     -> last seen; changed free resources (a versioned delta) are
                     kept and published in batches on "resources"
    missed heartbeats / closed connection / drain -> dead; publishes "node";
                     the node's actors die with it
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from skate._private.config import CONFIG
from skate._private.gcs.storage import Storage, Table

log = logging.getLogger(__name__)


class NodeTable:
    """Nodes by id, and the connections of their daemons."""

    def __init__(self, storage: Storage, publish: Callable[[str, Any], None], on_dead: Callable[[bytes, str], None]) -> None:
        self.nodes = Table(storage, "nodes")
        # After a restart (durable storage) every node known alive gets a
        # fresh heartbeat deadline to reconnect in.
        now = time.monotonic()
        for node in self.nodes.values():
            if node["alive"]:
                node["last_hb"] = now
        self.conns: dict[bytes, Any] = {}
        self.publish = publish
        self.on_dead = on_dead
        #: Changes not broadcast yet: node id -> [version, changed resources].
        self.changed: dict[bytes, list] = {}

    def register(self, conn: Any, info: dict) -> list[dict]:
        """Records a node (its daemon on ``conn``); returns every node's public record."""
        node_id = info["node_id"]
        known = self.nodes.get(node_id)
        if known is not None and not known["alive"]:
            # Its actors were declared dead with it: it must not come back.
            raise ValueError(f"node {node_id.hex()} was declared dead ({known.get('death_reason')}); it cannot re-register")
        info = dict(info, alive=True, available=dict(info["resources"]), version=0, last_hb=time.monotonic())
        self.nodes.set(node_id, info)
        self.conns[node_id] = conn
        conn.peer = node_id
        conn.on_close.append(lambda c: self.dead(node_id, "its node daemon disconnected"))
        self.publish("node", public(info))
        return self.all()

    def heartbeat(self, node_id: bytes, available: dict | None = None, version: int = 0, full: bool = False) -> None:
        """A node is alive; ``available``: its free resources that changed (all of them when ``full``).

        A report older than one already applied (``version``) is ignored.
        """
        node = self.nodes.get(node_id)
        if node is None or not node["alive"]:
            return
        node["last_hb"] = time.monotonic()
        if not available or version <= node.get("version", 0):
            return
        changed = {k: v for k, v in available.items() if node["available"].get(k) != v}
        node["available"] = dict(available) if full else {**node["available"], **available}
        node["version"] = version
        self.nodes.set(node_id, node)
        if changed:
            pending = self.changed.setdefault(node_id, [version, {}])
            pending[0] = version
            pending[1].update(changed)

    def flush_resources(self) -> None:
        """Publishes the changes kept since the last call, as one message."""
        if self.changed:
            batch = [[node_id, v, changed] for node_id, (v, changed) in self.changed.items()]
            self.changed = {}
            self.publish("resources", batch)

    async def broadcast_resources(self) -> None:
        """Batches resource changes to the subscribers every ``resource_report_s`` (runs forever)."""
        while True:
            await asyncio.sleep(CONFIG.resource_report_s)
            self.flush_resources()

    def all(self) -> list[dict]:
        return [public(n) for n in self.nodes.values()]

    def dead(self, node_id: bytes, why: str) -> None:
        """Declares a node dead (once)."""
        node = self.nodes.get(node_id)
        if node is None or not node["alive"]:
            return
        node["alive"] = False
        node["death_reason"] = why
        node["dead_at"] = time.time()
        self.nodes.set(node_id, node)
        log.info("node %s dead: %s", node_id.hex(), why)
        self.publish("node", public(node))
        self.on_dead(node_id, why)

    def drain(self, node_id: bytes) -> None:
        """Removes a node: declared dead, and its daemon told to shut down."""
        self.dead(node_id, "removed")
        c = self.conns.pop(node_id, None)
        if c is not None:
            c.notify("shutdown")

    async def watch_heartbeats(self) -> None:
        """Declares dead the nodes that stop sending heartbeats (runs forever)."""
        while True:
            await asyncio.sleep(CONFIG.heartbeat_s)
            now = time.monotonic()
            for node_id, node in self.nodes.items():
                if node["alive"] and now - node["last_hb"] > CONFIG.node_timeout_s:
                    self.dead(node_id, "missed heartbeats")


def public(n: dict) -> dict:
    """A node record without its bookkeeping."""
    return {k: v for k, v in n.items() if k not in ("last_hb", "dead_at")}
