r"""Placement groups in the control store: reserving gangs of bundles across nodes.

::

    create_placement_group --> PENDING, queued --> scheduling pass:
        pg_policy.place(free resources)  -- no fit: stays PENDING (infeasible
                                            when even the totals cannot fit)
        prepare_bundles on every chosen node daemon (resources set aside)
          all agreed  -> commit_bundles on each -> CREATED, waiters woken
          one refused -> cancel_bundles on the others -> PENDING, tried again
        (one node only: prepare and commit in one message)
    node dies      --> its bundles are placed again (RESCHEDULING -> CREATED)
    remove / the creator's job ends (not detached)
                   --> REMOVED; every node daemon cancels the group's bundles
                       and kills the workers leased in them

Passes run one at a time (``_loop``), after a create, a removal, a node
joining or dying, and every ``RETRY_S`` while groups wait.  A node's record
gains the bundle resources (``bundle_resources``) as they are committed and
loses them on removal; the changes are published on the ``node`` channel
(batched, every ``PUBLISH_S`` at most), so every node daemon's view of the
cluster (for spillback) includes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skate._private import bundle_resources as br
from skate._private.gcs.nodes import NodeTable, public
from skate._private.gcs.pg_policy import NodeRoom, place

log = logging.getLogger(__name__)

RETRY_S = 0.5
PUBLISH_S = 0.01  # node records changed by groups are published at most this often
RPC_TIMEOUT_S = 10.0
PENDING, CREATED, RESCHEDULING, REMOVED = "PENDING", "CREATED", "RESCHEDULING", "REMOVED"


@dataclass
class Group:
    """One placement group."""

    pg_id: bytes
    name: str
    namespace: str | None
    bundles: list[dict[str, float]]
    strategy: str
    detached: bool
    job_id: int | None
    selectors: list[dict[str, str]]
    state: str = PENDING
    nodes: list[bytes | None] = field(default_factory=list)
    infeasible: bool = False
    created_at: float = field(default_factory=time.time)
    latency_ms: float | None = None
    waiters: list[asyncio.Future] = field(default_factory=list)
    creator: Any = None  # the creator's link: told when the group is created or lost

    def tell_creator(self) -> None:
        """Tells the creating process whether the group is created now (its ``wait`` then needs no request)."""
        c = self.creator
        if c is not None and not c.closed:
            c.notify("placement_group_state", [self.pg_id, self.state == CREATED])

    def record(self) -> dict:
        """The group as clients see it (``PlacementGroupRecord``)."""
        return {
            "pg_id": self.pg_id, "name": self.name, "namespace": self.namespace, "bundles": self.bundles,
            "strategy": self.strategy, "state": self.state, "nodes": self.nodes, "detached": self.detached,
            "job_id": self.job_id, "infeasible": self.infeasible, "created_at": self.created_at,
            "latency_ms": self.latency_ms, "selectors": self.selectors,
        }


class PlacementGroupManager:
    """The placement groups of the cluster and the passes that reserve them."""

    def __init__(self, nodes: NodeTable, publish: Callable[[str, Any], None]) -> None:
        self.nodes = nodes
        self.publish = publish
        self.groups: dict[bytes, Group] = {}
        self.names: dict[tuple[str | None, str], bytes] = {}
        self.queue: list[bytes] = []  # groups waiting for a pass, oldest first
        self.kicked = asyncio.Event()
        self.dirty: set[bytes] = set()  # nodes whose records changed since the last publish
        self.publishing = False  # a publish is scheduled
        self.removed_order: list[bytes] = []
        self.cancelling: set[asyncio.Future] = set()  # removals giving bundles back now

    # --- requests ---------------------------------------------------------------------
    def create(self, body: dict, creator: Any = None) -> bool:
        """Records a new group and queues it.

        Raises:
            ValueError: a group with that name exists in the namespace.
        """
        pg_id = body["pg_id"]
        if pg_id in self.groups:
            return True
        name = body.get("name") or ""
        key = (body.get("namespace"), name)
        if name and key in self.names:
            raise ValueError(f"Failed to create placement group '{name}': a placement group with that name already exists")
        bundles = [{k: float(v) for k, v in b.items()} for b in body["bundles"]]
        g = Group(
            pg_id, name, body.get("namespace"), bundles, body["strategy"], bool(body.get("detached")),
            body.get("job_id"), list(body.get("selectors") or []), nodes=[None] * len(bundles), creator=creator,
        )
        self.groups[pg_id] = g
        if name:
            self.names[key] = pg_id
        self.queue.append(pg_id)
        self.kick()
        return True

    def remove(self, pg_id: bytes, why: str = "removed") -> bool:
        """Removes a group: its bundles are given back and what runs in them is killed."""
        g = self.groups.get(pg_id)
        if g is None or g.state == REMOVED:
            return False
        g.state = REMOVED
        g.tell_creator()
        g.creator = None
        if pg_id in self.queue:
            self.queue.remove(pg_id)
        if g.name and self.names.get((g.namespace, g.name)) == pg_id:
            del self.names[(g.namespace, g.name)]
        self._wake(g, False)
        held = {n for n in g.nodes if n is not None}
        task = asyncio.ensure_future(self._cancel_everywhere(g, held))
        self.cancelling.add(task)
        task.add_done_callback(self.cancelling.discard)
        self.removed_order.append(pg_id)
        while len(self.removed_order) > 1000:  # bounded history of removed groups
            self.groups.pop(self.removed_order.pop(0), None)
        log.debug("placement group %s %s", pg_id.hex(), why)
        return True

    async def wait(self, pg_id: bytes, timeout: float | None) -> bool:
        """True once the group is created; False at the timeout or when it is removed or unknown."""
        g = self.groups.get(pg_id)
        if g is None or g.state == REMOVED:
            return False
        if g.state == CREATED:
            return True
        fut = asyncio.get_running_loop().create_future()
        g.waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            if fut in g.waiters:
                g.waiters.remove(fut)

    def get(self, body: dict) -> dict | None:
        """A group's record, by ``pg_id`` or by ``name`` in ``namespace``."""
        pg_id = body.get("pg_id")
        if pg_id is None:
            pg_id = self.names.get((body.get("namespace"), body.get("name") or ""))
        g = self.groups.get(pg_id) if pg_id is not None else None
        return g.record() if g is not None else None

    def all(self) -> list[dict]:
        return [g.record() for g in self.groups.values()]

    # --- cluster events -------------------------------------------------------------------
    def kick(self) -> None:
        """Asks for a scheduling pass."""
        self.kicked.set()

    def node_died(self, node_id: bytes) -> None:
        """Places again the bundles a dead node held."""
        for g in self.groups.values():
            if g.state == REMOVED or node_id not in g.nodes:
                continue
            g.nodes = [None if n == node_id else n for n in g.nodes]
            if g.state == CREATED:
                g.state = RESCHEDULING
                g.tell_creator()
            if g.pg_id not in self.queue:
                self.queue.insert(0, g.pg_id)
        self.kick()

    def job_ended(self, job_id: int) -> None:
        """Removes the groups the job created, unless detached (follows Ray)."""
        for g in list(self.groups.values()):
            if g.job_id == job_id and not g.detached and g.state != REMOVED:
                self.remove(g.pg_id, "its job ended")

    # --- scheduling passes -----------------------------------------------------------------
    async def run(self) -> None:
        """Runs scheduling passes when kicked, and every ``RETRY_S`` while groups wait (forever)."""
        while True:
            try:
                await asyncio.wait_for(self.kicked.wait(), RETRY_S if self.queue else None)
            except asyncio.TimeoutError:
                pass
            self.kicked.clear()
            try:
                await self._pass()
            except Exception:
                log.exception("placement group scheduling pass failed")
            self._publish_soon()

    async def _pass(self) -> None:
        """Tries every waiting group, oldest first.  Each one's nodes are chosen
        (and its bundles counted in the node records) before the next one's,
        so all of them can then wait on their node daemons at once."""
        groups = []
        for pg_id in list(self.queue):
            g = self.groups.get(pg_id)
            if g is None or g.state == REMOVED:
                self.queue.remove(pg_id)
            else:
                groups.append(g)
        whole = await asyncio.gather(*(self._try(g) for g in groups))
        for g, done in zip(groups, whole, strict=True):
            if done and g.pg_id in self.queue:
                self.queue.remove(g.pg_id)

    def _rooms(self, total: bool) -> dict[bytes, NodeRoom]:
        out = {}
        for node_id, n in self.nodes.nodes.items():
            if n["alive"] and node_id in self.nodes.conns:
                # (the bundle resources of groups are never asked for by bundles: left in)
                out[node_id] = NodeRoom(n["resources"] if total else n.get("available", n["resources"]), n.get("labels") or {})
        return out

    async def _try(self, g: Group) -> bool:
        """One attempt at reserving the group's unplaced bundles; True when it is whole."""
        todo = {i: b for i, b in enumerate(g.bundles) if g.nodes[i] is None}
        placed = {i: n for i, n in enumerate(g.nodes) if n is not None}
        if not todo:
            return True
        choice = place(todo, g.strategy, self._rooms(False), placed, g.selectors)
        if choice is None:
            g.infeasible = place(todo, g.strategy, self._rooms(True), placed, g.selectors) is None
            return False
        g.infeasible = False
        by_node: dict[bytes, list[int]] = {}
        for i, n in choice.items():
            by_node.setdefault(n, []).append(i)
        one = len(by_node) == 1
        # The records change before the node daemons are asked: their next
        # heartbeats (after the change) then never race an older view of ours.
        for n, idx in by_node.items():
            self._account(n, g, idx, +1)
        replies = await asyncio.gather(
            *(self._ask(n, "prepare_bundles", {"pg_id": g.pg_id, "bundles": [[i, g.bundles[i]] for i in idx], "commit": one})
              for n, idx in by_node.items())
        )
        ok = all(r is True for r in replies)
        if ok and not one:
            replies = await asyncio.gather(*(self._ask(n, "commit_bundles", g.pg_id) for n in by_node))
            ok = all(r is True for r in replies)
        if not ok or g.state == REMOVED:
            # Whatever was set aside (or committed) goes back; a node that
            # never got that far answers the cancel with nothing to do.
            for n, idx in by_node.items():
                self._account(n, g, idx, -1)
            await asyncio.gather(*(
                self._ask(n, "cancel_bundles", {"pg_id": g.pg_id, "indexes": idx, "removed": g.state == REMOVED})
                for n, idx in by_node.items()
            ))
            return g.state == REMOVED
        for i, n in choice.items():
            g.nodes[i] = n
        g.state = CREATED
        g.tell_creator()
        if g.latency_ms is None:
            g.latency_ms = (time.time() - g.created_at) * 1000.0
        self._wake(g, True)
        return True

    async def _ask(self, node_id: bytes, method: str, body: Any) -> Any:
        conn = self.nodes.conns.get(node_id)
        if conn is None or conn.closed:
            return False
        try:
            return await asyncio.wait_for(conn.request(method, body), RPC_TIMEOUT_S)
        except Exception as e:  # the node died or stalled: treated as a refusal
            log.info("placement group %s on node %s failed: %s", method, node_id.hex()[:12], e)
            return False

    async def _cancel_everywhere(self, g: Group, held: set[bytes]) -> None:
        body = {"pg_id": g.pg_id, "removed": True}
        for node_id, conn in list(self.nodes.conns.items()):
            if node_id not in held and not conn.closed:
                conn.notify("cancel_bundles", body)
        await asyncio.gather(*(self._ask(n, "cancel_bundles", body) for n in held))
        for n in held:
            self._account(n, g, [i for i, m in enumerate(g.nodes) if m == n], -1)
        self._publish_soon()

    def _account(self, node_id: bytes, g: Group, idx: list[int], sign: int) -> None:
        """Adds (``sign`` +1) or takes away (-1) the bundles ``idx`` in the node's record."""
        node = self.nodes.nodes.get(node_id)
        if node is None or not node["alive"]:
            return
        total, avail = node["resources"], node.setdefault("available", dict(node["resources"]))
        hexid = g.pg_id.hex()
        for i in idx:
            for k, v in g.bundles[i].items():
                avail[k] = avail.get(k, 0.0) - sign * v
            for k, v in br.group_resources(hexid, i, g.bundles[i]).items():
                total[k] = total.get(k, 0.0) + sign * v
                avail[k] = avail.get(k, 0.0) + sign * v
                if total[k] <= 1e-9:
                    total.pop(k, None)
                    avail.pop(k, None)
        self.nodes.nodes.set(node_id, node)
        self.dirty.add(node_id)

    def _publish_soon(self) -> None:
        """Publishes the changed node records shortly (a burst of changes: one message)."""
        if not self.publishing:
            self.publishing = True
            asyncio.get_running_loop().call_later(PUBLISH_S, self._publish_nodes)

    def _publish_nodes(self) -> None:
        self.publishing = False
        for node_id in self.dirty:
            node = self.nodes.nodes.get(node_id)
            if node is not None and node["alive"]:
                self.publish("node", public(node))
        self.dirty.clear()

    def _wake(self, g: Group, created: bool) -> None:
        for fut in g.waiters:
            if not fut.done():
                fut.set_result(created)
        g.waiters.clear()
