"""Placement groups across a 3-node ``Cluster``: strategies, infeasible groups, dead nodes.

The head has 1 CPU; two more nodes have 2 CPUs and ``{"w": 1}`` each (so
that a group can be kept off the head, whose node the driver uses).
"""

from __future__ import annotations

import pytest
from conftest import wait_for

import skate
from skate._private import cli_support
from skate.util.placement_group import (
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from skate.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@skate.remote(num_cpus=0)
class Where:
    def node(self) -> str:
        return skate.get_runtime_context().get_node_id()


@skate.remote(num_cpus=0)
def node_of() -> str:
    return skate.get_runtime_context().get_node_id()


@pytest.fixture
def three_nodes(cluster):
    nodes = [cluster.head_node, cluster.add_node(num_cpus=2, resources={"w": 1}),
             cluster.add_node(num_cpus=2, resources={"w": 1})]
    skate.init(address=cluster.address)
    yield cluster, nodes
    skate.shutdown()


def bundle_nodes(pg) -> dict[int, str]:
    return placement_group_table(pg)["bundles_to_node_id"]


@pytest.mark.timeout(180)
def test_strict_spread_one_bundle_per_node_and_actors_follow(three_nodes):
    cluster, nodes = three_nodes
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(60)
    placed = bundle_nodes(pg)
    assert sorted(placed.values()) == sorted(n.node_id for n in nodes)
    actors = [Where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in range(3)]
    assert [skate.get(a.node.remote(), timeout=60) for a in actors] == [placed[i] for i in range(3)]
    # a fourth bundle cannot have a node of its own
    more = placement_group([{"CPU": 0.1}] * 4, strategy="STRICT_SPREAD")
    assert more.wait(1) is False
    assert placement_group_table(more)["stats"]["scheduling_state"] == "INFEASIBLE"
    remove_placement_group(more)
    remove_placement_group(pg)


@pytest.mark.timeout(180)
def test_pack_and_spread(three_nodes):
    cluster, nodes = three_nodes
    packed = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert packed.wait(60)
    assert len(set(bundle_nodes(packed).values())) == 1  # one of the 2-CPU nodes
    remove_placement_group(packed)
    wait_for(lambda: skate.available_resources().get("CPU") == 5, 30, what="CPUs back")
    spread = placement_group([{"CPU": 0.5}] * 3, strategy="SPREAD")
    assert spread.wait(60)
    assert len(set(bundle_nodes(spread).values())) == 3
    # tasks in any bundle run on a node holding one
    got = {skate.get(node_of.options(placement_group=spread).remote(), timeout=60) for _ in range(6)}
    assert got <= set(bundle_nodes(spread).values())
    remove_placement_group(spread)


@pytest.mark.timeout(180)
def test_strict_pack_no_node_fits_stays_pending_then_a_node_joins(three_nodes):
    cluster, nodes = three_nodes
    pg = placement_group([{"CPU": 2}, {"CPU": 1}], strategy="STRICT_PACK", name="too-big")
    assert pg.wait(1) is False
    entry = placement_group_table(pg)
    assert entry["state"] == "PENDING" and entry["stats"]["scheduling_state"] == "INFEASIBLE"
    text = "\n".join(cli_support.format_status(cli_support.cluster_status(cluster.address)))
    assert "placement groups waiting:" in text
    assert f"{pg.id.hex()} 'too-big' STRICT_PACK" in text and "infeasible" in text
    big = cluster.add_node(num_cpus=3)
    assert pg.wait(60)
    assert set(bundle_nodes(pg).values()) == {big.node_id}
    remove_placement_group(pg)


@pytest.mark.timeout(180)
def test_bundles_of_a_killed_node_are_placed_again(three_nodes):
    cluster, nodes = three_nodes
    pg = placement_group([{"w": 1, "CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(60)
    first = bundle_nodes(pg)[0]
    victim = next(n for n in nodes if n.node_id == first)
    survivor = next(n for n in nodes[1:] if n.node_id != first)
    a = Where.options(placement_group=pg).remote()
    assert skate.get(a.node.remote(), timeout=60) == first
    cluster.remove_node(victim, allow_graceful=False)
    wait_for(lambda: bundle_nodes(pg).get(0) == survivor.node_id, 60, what="the bundle placed again")
    assert placement_group_table(pg)["state"] == "CREATED"
    assert skate.get(node_of.options(placement_group=pg, placement_group_bundle_index=0).remote(), timeout=60) \
        == survivor.node_id
    remove_placement_group(pg)


@skate.remote(num_cpus=0)
class Gate:
    """Counts arrivals and holds them until opened."""

    def __init__(self) -> None:
        import asyncio

        self.event = asyncio.Event()
        self.arrived = 0

    async def wait(self) -> bool:
        self.arrived += 1
        await self.event.wait()
        return True

    async def count(self) -> int:
        return self.arrived

    async def open(self) -> None:
        self.event.set()


@skate.remote(num_cpus=0)
def held_node_of(gate) -> str:
    skate.get(gate.wait.remote())
    return skate.get_runtime_context().get_node_id()


@pytest.mark.timeout(180)
def test_spread_strategy_spreads_tasks_and_actors_over_nodes(three_nodes):
    cluster, nodes = three_nodes
    everywhere = {n.node_id for n in nodes}
    actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert {skate.get(a.node.remote(), timeout=60) for a in actors} == everywhere
    gate = Gate.remote()
    refs = [held_node_of.options(scheduling_strategy="SPREAD").remote(gate) for _ in range(6)]
    wait_for(lambda: skate.get(gate.count.remote()) == 6, 60, what="6 tasks running at once")
    gate.open.remote()
    assert set(skate.get(refs, timeout=60)) == everywhere
