"""Placement groups on a real cluster: reservation, tasks and actors inside, removal, lifetimes.

One node (4 CPUs) for the API; ``test_placement_group_cluster.py`` has the
multi-node placement (strategies, infeasible groups, dead nodes).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import wait_for

import skate
from skate import exceptions as exc
from skate.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from skate.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@skate.remote(num_cpus=1)
def group_of() -> tuple:
    ctx = skate.get_runtime_context()
    return get_current_placement_group(), ctx.get_placement_group_id(), ctx.should_capture_child_tasks_in_placement_group


@skate.remote(num_cpus=0)
def child_group() -> str | None:
    return skate.get_runtime_context().get_placement_group_id()


@skate.remote(num_cpus=0)
def parent(explicit_default: bool) -> str | None:
    opts = {"scheduling_strategy": "DEFAULT"} if explicit_default else {}
    return skate.get(child_group.options(**opts).remote())


@skate.remote
class Member:
    def pid(self) -> int:
        return os.getpid()

    def group(self) -> str | None:
        return skate.get_runtime_context().get_placement_group_id()

    def child_group(self) -> str | None:
        return skate.get(child_group.remote())


def in_pg(pg, index: int = -1, capture: bool | None = None) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, index, capture)}


@pytest.mark.parametrize(
    "bundles, needle",
    [
        ([], "non-empty list"),
        ({"CPU": 1}, "must be a list"),
        ([{}], "cannot be an empty dictionary"),
        ([{"CPU": 0}], "only 0 values"),
        ([{"CPU": "1"}], "resource dictionaries"),
        ([{"CPU": -1}], "negative"),
    ],
)
def test_bad_bundles_raise_value_error_like_ray(bundles, needle):
    with pytest.raises(ValueError, match=needle):
        placement_group(bundles)


def test_bad_strategy_lifetime_and_name_raise_like_ray():
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="RANDOM")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(ValueError, match="length of `bundle_label_selector`"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{}, {}])
    with pytest.raises(ValueError, match="non-empty value"):
        get_placement_group("")


def test_ready_wait_table_and_resources(ray_start_4cpu):
    pg = placement_group([{"CPU": 1}, {"CPU": 2}], strategy="PACK", name="gang")
    assert pg.wait(timeout_seconds=30) is True
    assert skate.get(pg.ready(), timeout=30) == pg
    assert pg.bundle_specs == [{"CPU": 1}, {"CPU": 2}] and pg.bundle_count == 2
    entry = placement_group_table(pg)
    assert entry["placement_group_id"] == pg.id.hex()
    assert entry["state"] == "CREATED" and entry["strategy"] == "PACK" and entry["name"] == "gang"
    assert entry["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 2.0}}
    assert set(entry["bundles_to_node_id"]) == {0, 1}
    assert pg.id.hex() in placement_group_table()
    hexid = pg.id.hex()
    total = skate.cluster_resources()
    assert total[f"CPU_group_{hexid}"] == 3 and total[f"CPU_group_1_{hexid}"] == 2
    assert total[f"bundle_group_{hexid}"] == 2000 and total[f"bundle_group_0_{hexid}"] == 1000
    wait_for(lambda: skate.available_resources().get("CPU") == 1, what="3 CPUs set aside")
    # by name, in this namespace
    assert get_placement_group("gang") == pg
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group("nope")
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="gang")
    remove_placement_group(pg)
    wait_for(lambda: placement_group_table(pg)["state"] == "REMOVED", what="removed")
    wait_for(lambda: skate.available_resources().get("CPU") == 4, what="CPUs back")
    assert not any("_group_" in k for k in skate.cluster_resources())
    assert pg.wait(0.1) is False


def test_tasks_and_actors_run_in_their_bundle(ray_start_4cpu):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    skate.get(pg.ready(), timeout=30)
    got, hexid, capture = skate.get(group_of.options(**in_pg(pg, 1)).remote(), timeout=60)
    assert got == pg and hexid == pg.id.hex() and capture is False
    # the older option names
    got, _, capture = skate.get(
        group_of.options(placement_group=pg, placement_group_bundle_index=0,
                         placement_group_capture_child_tasks=True).remote(), timeout=60)
    assert got == pg and capture is True
    # the group's 2 CPUs run 2 tasks at once; the 2 others outside it stay free
    a = Member.options(num_cpus=1, **in_pg(pg, 0)).remote()
    b = Member.options(num_cpus=1, **in_pg(pg, 1)).remote()
    assert skate.get(a.group.remote(), timeout=60) == pg.id.hex()
    assert skate.get(b.pid.remote(), timeout=60) > 0
    wait_for(lambda: skate.available_resources().get(f"CPU_group_{pg.id.hex()}", 0) == 0, what="bundles in use")
    assert skate.available_resources().get("CPU") == 2
    assert get_current_placement_group() is None  # the driver is in none
    remove_placement_group(pg)


def test_requests_that_fit_no_bundle_are_refused(ray_start_4cpu):
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(ValueError, match="cannot fit into any bundles"):
        group_of.options(num_cpus=2, **in_pg(pg)).remote()
    with pytest.raises(ValueError, match="bundle index 3 is invalid"):
        group_of.options(**in_pg(pg, 3)).remote()
    with pytest.raises(ValueError, match="bundle index must be -1"):
        group_of.options(placement_group=None, placement_group_bundle_index=0).remote()
    with pytest.raises(ValueError, match="only be specified once"):
        group_of.options(placement_group=pg, scheduling_strategy="SPREAD").remote()
    gpu_only = placement_group([{"GPU": 1}])
    with pytest.raises(ValueError, match="requires 1.0 CPU for creation"):
        Member.options(placement_group=gpu_only).remote()
    remove_placement_group(pg)
    remove_placement_group(gpu_only)


def test_capture_child_tasks(ray_start_4cpu):
    pg = placement_group([{"CPU": 1}])
    skate.get(pg.ready(), timeout=30)
    hexid = pg.id.hex()
    assert skate.get(parent.options(**in_pg(pg, capture=True)).remote(False), timeout=60) == hexid
    assert skate.get(parent.options(**in_pg(pg, capture=False)).remote(False), timeout=60) is None
    # an explicit strategy in the child opts out of the capture (follows Ray)
    assert skate.get(parent.options(**in_pg(pg, capture=True)).remote(True), timeout=60) is None
    # an actor captures the tasks its methods start
    m = Member.options(num_cpus=0, **in_pg(pg, capture=True)).remote()
    assert skate.get(m.child_group.remote(), timeout=60) == hexid
    remove_placement_group(pg)


def test_waits_until_resources_free(ray_start_4cpu):
    big = placement_group([{"CPU": 4}])
    assert big.wait(30)
    small = placement_group([{"CPU": 1}], strategy="STRICT_PACK")
    assert small.wait(0.5) is False
    entry = placement_group_table(small)
    assert entry["state"] == "PENDING" and entry["stats"]["scheduling_state"] == "PENDING"
    ready = small.ready()
    ready_now, _ = skate.wait([ready], timeout=0.2)
    assert ready_now == []
    remove_placement_group(big)
    assert skate.get(ready, timeout=30) == small
    remove_placement_group(small)


def test_removal_ends_the_actors_and_tasks_inside(ray_start_4cpu):
    pg = placement_group([{"CPU": 2}])
    skate.get(pg.ready(), timeout=30)
    m = Member.options(num_cpus=1, placement_group=pg).remote()
    pid = skate.get(m.pid.remote(), timeout=60)
    remove_placement_group(pg)
    with pytest.raises(exc.ActorDiedError, match="placement group"):
        skate.get(m.pid.remote(), timeout=60)
    from conftest import pid_gone

    wait_for(lambda: pid_gone(pid), what="the actor's worker gone")
    # new work for the removed group can never run
    with pytest.raises((exc.TaskUnschedulableError, exc.ActorUnschedulableError), match="was removed"):
        skate.get(group_of.options(placement_group=pg).remote(), timeout=60)


def test_ready_of_a_removed_group_raises(ray_start_4cpu):
    never = placement_group([{"CPU": 64}])
    ref = never.ready()
    remove_placement_group(never)
    with pytest.raises(exc.RayError, match="removed before it was created"):
        skate.get(ref, timeout=60)


def test_state_api_lists_groups(ray_start_4cpu):
    from skate.util import state

    pg = placement_group([{"CPU": 1}], name="listed")
    pg.wait(30)
    rows = state.list_placement_groups()
    row = [r for r in rows if r.placement_group_id == pg.id.hex()][0]
    assert row.name == "listed" and row.state == "CREATED" and row.bundles[0]["unit_resources"] == {"CPU": 1.0}
    assert state.get_placement_group(pg.id.hex()).strategy == "PACK"
    remove_placement_group(pg)


def test_handles_pickle_and_empty():
    import pickle

    empty = PlacementGroup.empty()
    assert empty.is_empty and empty.bundle_specs == []
    pg = PlacementGroup(skate.PlacementGroupID.from_random(), [{"CPU": 1}])
    again = pickle.loads(pickle.dumps(pg))
    assert again == pg and again.bundle_specs == [{"CPU": 1}]


_DRIVER = """
import sys, skate
from skate.util.placement_group import placement_group
skate.init(address=sys.argv[1], namespace="ns")
placement_group([{"CPU": 1}], name=sys.argv[2], lifetime=sys.argv[3] or None).wait(30)
"""


@pytest.mark.timeout(180)
def test_lifetime_detached_survives_its_driver(cluster):
    cluster.add_node(num_cpus=2)
    for name, lifetime in (("temp", ""), ("kept", "detached")):
        subprocess.run([sys.executable, "-c", _DRIVER, cluster.address, name, lifetime], check=True, timeout=120)
    skate.init(address=cluster.address, namespace="ns")
    try:
        kept = get_placement_group("kept")
        assert placement_group_table(kept)["state"] == "CREATED"
        wait_for(lambda: placement_group_table()[kept.id.hex()] and all(
            e["state"] == "REMOVED" for e in placement_group_table().values() if e["name"] == "temp"), 30,
            what="the non-detached group removed with its job")
        with pytest.raises(ValueError):
            get_placement_group("temp")
        remove_placement_group(kept)
    finally:
        skate.shutdown()
