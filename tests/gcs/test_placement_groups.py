"""The control store's placement-group manager: two-phase reservation, rollback, retries.

Node daemons are stand-ins that record what they are asked and answer as
told, so each step of the protocol is checked without processes.
"""

from __future__ import annotations

import asyncio

from skate._private.gcs.nodes import NodeTable
from skate._private.gcs.placement_groups import (
    CREATED,
    PENDING,
    REMOVED,
    RESCHEDULING,
    PlacementGroupManager,
)
from skate._private.gcs.storage import MemoryStorage


class FakeNode:
    """A node daemon's link: answers prepare/commit/cancel, records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.refuse_prepare = False
        self.closed = False
        self.on_close: list = []
        self.peer = None

    def request(self, method: str, body: object) -> asyncio.Future:
        self.calls.append((method, body))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(not (method == "prepare_bundles" and self.refuse_prepare))
        return fut

    def notify(self, method: str, body: object = None) -> None:
        self.calls.append((method, body))

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


def cluster(*cpus: float) -> tuple[PlacementGroupManager, list[bytes], list[FakeNode]]:
    published: list = []
    nodes = NodeTable(MemoryStorage(), lambda ch, msg: published.append((ch, msg)), lambda n, why: None)
    ids, links = [], []
    for i, c in enumerate(cpus):
        node_id = bytes([i + 1]) * 16
        link = FakeNode()
        nodes.register(link, {"node_id": node_id, "resources": {"CPU": c}, "labels": {}})
        ids.append(node_id)
        links.append(link)
    return PlacementGroupManager(nodes, lambda ch, msg: published.append((ch, msg))), ids, links


def create(m: PlacementGroupManager, pg_id: bytes, bundles: list, strategy: str) -> None:
    m.create({"pg_id": pg_id, "bundles": bundles, "strategy": strategy, "name": "", "namespace": None,
              "detached": False, "job_id": 1, "selectors": []})


def test_two_phase_commit_across_nodes_and_rollback_on_a_refusal():
    async def go() -> None:
        m, ids, links = cluster(1, 1)
        links[1].refuse_prepare = True
        create(m, b"g" * 18, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
        await m._pass()
        g = m.groups[b"g" * 18]
        assert g.state == PENDING
        # the node that agreed gives its bundle back; nothing was committed
        assert links[0].methods() == ["prepare_bundles", "cancel_bundles"]
        assert "commit_bundles" not in links[1].methods()
        assert m.nodes.nodes.get(ids[0])["available"]["CPU"] == 1  # the record is restored
        links[1].refuse_prepare = False
        await m._pass()
        assert g.state == CREATED and sorted(g.nodes) == sorted(ids)
        for link in links:
            assert link.methods()[-2:] == ["prepare_bundles", "commit_bundles"]
        assert m.queue == []
        hexid = g.pg_id.hex()
        assert m.nodes.nodes.get(ids[0])["resources"][f"CPU_group_{hexid}"] == 1
        assert await m.wait(g.pg_id, 0.1) is True

    asyncio.run(go())


def test_one_node_prepares_and_commits_in_one_message():
    async def go() -> None:
        m, ids, links = cluster(4)
        create(m, b"p" * 18, [{"CPU": 1}, {"CPU": 2}], "STRICT_PACK")
        await m._pass()
        assert m.groups[b"p" * 18].state == CREATED
        assert links[0].methods() == ["prepare_bundles"] and links[0].calls[0][1]["commit"] is True

    asyncio.run(go())


def test_infeasible_waits_and_dead_node_bundles_are_placed_again():
    async def go() -> None:
        m, ids, links = cluster(1, 1, 1)
        create(m, b"x" * 18, [{"CPU": 2}], "PACK")
        await m._pass()
        assert m.groups[b"x" * 18].infeasible and m.groups[b"x" * 18].state == PENDING
        create(m, b"s" * 18, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
        await m._pass()
        g = m.groups[b"s" * 18]
        assert g.state == CREATED
        lost = g.nodes[0]
        m.nodes.dead(lost, "test")
        m.node_died(lost)
        assert g.state == RESCHEDULING and g.nodes[0] is None
        await m._pass()
        assert g.state == CREATED and g.nodes[0] not in (lost, g.nodes[1])

    asyncio.run(go())


def test_removal_and_job_end():
    async def go() -> None:
        m, ids, links = cluster(4)
        create(m, b"r" * 18, [{"CPU": 1}], "PACK")
        await m._pass()
        m.job_ended(1)
        assert m.groups[b"r" * 18].state == REMOVED
        await asyncio.gather(*m.cancelling)  # the cancels go out
        assert ("cancel_bundles", {"pg_id": b"r" * 18, "removed": True}) in links[0].calls
        assert not any("_group_" in k for k in m.nodes.nodes.get(ids[0])["resources"])

    asyncio.run(go())
