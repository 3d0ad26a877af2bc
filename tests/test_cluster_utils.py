"""Several node daemons on one machine (skate.cluster_utils.Cluster).

Each test starts a head with 1 CPU (the ``cluster`` fixture), adds nodes and
connects a driver with ``init(address=cluster.address)``; tasks are placed by
resources and by node affinity, objects move between nodes, nodes come and go.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import wait_for

import skate


class NodeAffinity:
    """A stand-in for ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy."""

    def __init__(self, node_id: str, soft: bool = False) -> None:
        self.node_id = node_id
        self.soft = soft


@skate.remote(num_cpus=0)
def where() -> str:
    return skate.get_runtime_context().get_node_id()


def _alive(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["Alive"]]


@pytest.fixture
def two_nodes(cluster):
    """The head (1 CPU) plus a node with 1 CPU and {"other": 1}; a connected driver."""
    other = cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)
    yield cluster, other
    skate.shutdown()


def test_two_node_view(two_nodes):
    cluster, other = two_nodes
    res = skate.cluster_resources()
    assert res["CPU"] == 2
    assert res.get("other") == 1
    nodes = skate.nodes()
    assert len(_alive(nodes)) == 2
    ids = {n["NodeID"] for n in nodes if n["Alive"]}
    assert ids == {cluster.head_node.node_id, other.node_id}
    heads = [n for n in nodes if n["IsHead"]]
    assert [n["NodeID"] for n in heads] == [cluster.head_node.node_id]
    by_id = {n["NodeID"]: n for n in nodes}
    assert by_id[other.node_id]["Resources"].get("other") == 1
    assert "other" not in by_id[cluster.head_node.node_id]["Resources"]
    assert skate.available_resources().get("other") == 1
    # The driver runs on the head (it found the head's socket on this machine).
    assert skate.get_runtime_context().get_node_id() == cluster.head_node.node_id


def test_custom_resource_places_task_on_other_node(two_nodes):
    cluster, other = two_nodes
    on_other = skate.get(where.options(resources={"other": 1}).remote(), timeout=60)
    assert on_other == other.node_id
    on_head = skate.get(
        where.options(scheduling_strategy=NodeAffinity(cluster.head_node.node_id)).remote(), timeout=60
    )
    assert on_head == cluster.head_node.node_id
    assert on_head != on_other


def test_node_affinity_both_ways(two_nodes):
    cluster, other = two_nodes
    for node in (other, cluster.head_node, other):
        got = skate.get(where.options(scheduling_strategy=NodeAffinity(node.node_id)).remote(), timeout=60)
        assert got == node.node_id


def test_objects_cross_nodes(two_nodes):
    cluster, other = two_nodes
    n = 2_000_000  # 16 MB: lives in shared memory, not inline

    @skate.remote(num_cpus=0)
    def make(n):
        return skate.get_runtime_context().get_node_id(), np.arange(n, dtype=np.float64)

    @skate.remote(num_cpus=0)
    def consume(pair):
        node, arr = pair
        return node, skate.get_runtime_context().get_node_id(), float(arr.sum()), arr.shape

    @skate.remote(num_cpus=0)
    def consume_array(arr):
        return skate.get_runtime_context().get_node_id(), float(arr.sum()), arr.shape

    @skate.remote(num_cpus=0, num_returns=2)
    def make2(n):
        return skate.get_runtime_context().get_node_id(), np.arange(n, dtype=np.float64)

    expected = float(n * (n - 1) / 2)
    on_b = NodeAffinity(other.node_id)
    on_a = NodeAffinity(cluster.head_node.node_id)

    # Made on B, passed (as a ref) to a task on A, fetched by the driver (on A).
    node_ref, arr_ref = make2.options(scheduling_strategy=on_b).remote(n)
    assert skate.get(node_ref, timeout=60) == other.node_id
    got = skate.get(consume_array.options(scheduling_strategy=on_a).remote(arr_ref), timeout=60)
    assert got == (cluster.head_node.node_id, expected, (n,))
    arr = skate.get(arr_ref, timeout=60)
    assert arr.shape == (n,) and arr[-1] == n - 1 and float(arr.sum()) == expected

    # A single return value holding the array.
    pair_ref = make.options(scheduling_strategy=on_b).remote(n)
    made_on, read_on, total, shape = skate.get(consume.options(scheduling_strategy=on_a).remote(pair_ref), timeout=60)
    assert (made_on, read_on, total, shape) == (other.node_id, cluster.head_node.node_id, expected, (n,))

    # A put on the driver (on A), read by a task on B, both as a ref and nested in a list.
    big = np.full(n, 3, dtype=np.int64)
    put_ref = skate.put(big)
    node, total, shape = skate.get(consume_array.options(scheduling_strategy=on_b).remote(put_ref), timeout=60)
    assert (node, total, shape) == (other.node_id, float(3 * n), (n,))

    @skate.remote(num_cpus=0)
    def nested(refs):
        return skate.get_runtime_context().get_node_id(), int(skate.get(refs[0]).sum())

    assert skate.get(nested.options(scheduling_strategy=on_b).remote([put_ref]), timeout=60) == (
        other.node_id,
        3 * n,
    )


def test_tasks_spill_to_second_node_when_head_is_busy(two_nodes, tmp_path):
    cluster, other = two_nodes
    release = tmp_path / "release"

    @skate.remote(num_cpus=1)
    def hold(i, marker_dir, release_path):
        import os
        import time

        with open(os.path.join(marker_dir, f"started-{i}"), "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(release_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return skate.get_runtime_context().get_node_id()

    refs = [hold.remote(i, str(tmp_path), str(release)) for i in range(2)]
    try:
        # Both run at once although the head has a single CPU.
        wait_for(
            lambda: all((tmp_path / f"started-{i}").exists() for i in range(2)),
            timeout=30,
            what="both tasks to start",
        )
    finally:
        release.touch()
    nodes = skate.get(refs, timeout=60)
    assert set(nodes) == {cluster.head_node.node_id, other.node_id}


def test_remove_node(two_nodes):
    cluster, other = two_nodes
    assert skate.get(where.options(resources={"other": 1}).remote(), timeout=60) == other.node_id
    cluster.remove_node(other)
    nodes = skate.nodes()
    by_id = {n["NodeID"]: n for n in nodes}
    assert by_id[other.node_id]["Alive"] is False
    assert by_id[cluster.head_node.node_id]["Alive"] is True
    res = wait_for(lambda: (r := skate.cluster_resources()).get("CPU") == 1 and r, what="resources to drop")
    assert "other" not in res
    # The cluster keeps working on the head.
    assert skate.get(where.remote(), timeout=60) == cluster.head_node.node_id


def test_wait_for_nodes(cluster):
    a = cluster.add_node(num_cpus=1, wait=False)
    b = cluster.add_node(num_cpus=1, resources={"b": 2}, wait=False)
    cluster.wait_for_nodes()
    skate.init(address=cluster.address)
    alive = {n["NodeID"] for n in skate.nodes() if n["Alive"]}
    assert alive == {cluster.head_node.node_id, a.node_id, b.node_id}
    assert {n.node_id for n in cluster.list_all_nodes()} == alive
    res = skate.cluster_resources()
    assert res["CPU"] == 3 and res["b"] == 2


def test_task_waits_for_a_node_with_its_resource(cluster):
    skate.init(address=cluster.address)
    ref = where.options(resources={"late": 1}).remote()
    ready, not_ready = skate.wait([ref], timeout=1.0)
    assert ready == [] and not_ready == [ref]
    late = cluster.add_node(num_cpus=1, resources={"late": 1})
    assert skate.get(ref, timeout=60) == late.node_id


def test_actor_on_added_node(cluster):
    skate.init(address=cluster.address)
    late = cluster.add_node(num_cpus=1, resources={"box": 1})

    @skate.remote(resources={"box": 1})
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n, skate.get_runtime_context().get_node_id()

    c = Counter.remote()
    assert skate.get(c.incr.remote(), timeout=60) == (1, late.node_id)
    assert skate.get(c.incr.remote(), timeout=60) == (2, late.node_id)


def test_init_auto_finds_latest_cluster(cluster):
    skate.init(address="auto")
    ctx = skate.get_runtime_context()
    assert ctx.gcs_address == cluster.address
    assert ctx.get_node_id() == cluster.head_node.node_id
    assert skate.cluster_resources()["CPU"] == 1
    assert skate.get(where.remote(), timeout=60) == cluster.head_node.node_id


def test_init_address_env_var(cluster, monkeypatch):
    monkeypatch.setenv("SKATE_ADDRESS", cluster.address)
    skate.init()
    assert skate.get_runtime_context().gcs_address == cluster.address
    assert skate.cluster_resources()["CPU"] == 1


def test_init_with_node_resources_rejected_when_connecting(cluster):
    with pytest.raises(ValueError):
        skate.init(address=cluster.address, num_cpus=2)
    assert not skate.is_initialized()


def test_driver_reconnects_after_shutdown(cluster):
    for _ in range(2):
        skate.init(address=cluster.address)
        assert skate.get(where.remote(), timeout=60) == cluster.head_node.node_id
        skate.shutdown()
    # Disconnecting a driver does not stop the cluster.
    assert cluster.head_node._proc.proc.poll() is None
    assert any(n["alive"] for n in cluster._nodes())
    assert os.path.isdir(os.path.dirname(cluster._info["token_file"]))


def test_node_affinity_to_removed_node(two_nodes):
    cluster, other = two_nodes
    cluster.remove_node(other)
    # soft: runs anywhere else.
    soft = where.options(scheduling_strategy=NodeAffinity(other.node_id, soft=True)).remote()
    assert skate.get(soft, timeout=60) == cluster.head_node.node_id
    # hard: Ray fails the task with TaskUnschedulableError instead of leaving it pending.
    hard = where.options(scheduling_strategy=NodeAffinity(other.node_id, soft=False)).remote()
    with pytest.raises(skate.exceptions.TaskUnschedulableError):
        skate.get(hard, timeout=10)


def test_running_task_is_retried_when_its_node_dies(two_nodes, tmp_path):
    cluster, other = two_nodes
    log = tmp_path / "runs"
    release = tmp_path / "release"

    @skate.remote(num_cpus=1, max_retries=2)
    def work(log_path, release_path):
        import os
        import time

        with open(log_path, "a") as f:
            f.write(skate.get_runtime_context().get_node_id() + "\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(release_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return skate.get_runtime_context().get_node_id()

    ref = work.options(scheduling_strategy=NodeAffinity(other.node_id, soft=True)).remote(str(log), str(release))
    wait_for(lambda: log.exists() and log.read_text().split(), timeout=30, what="the first attempt to start")
    assert log.read_text().split() == [other.node_id]
    cluster.remove_node(other, allow_graceful=False)
    try:
        wait_for(lambda: len(log.read_text().split()) >= 2, timeout=30, what="the task to be retried")
    finally:
        release.touch()
    assert log.read_text().split()[1] == cluster.head_node.node_id
    assert skate.get(ref, timeout=60) == cluster.head_node.node_id


def test_node_affinity_to_unknown_node(cluster):
    skate.init(address=cluster.address)
    unknown = os.urandom(16).hex()
    soft = where.options(scheduling_strategy=NodeAffinity(unknown, soft=True)).remote()
    assert skate.get(soft, timeout=60) == cluster.head_node.node_id
    hard = where.options(scheduling_strategy=NodeAffinity(unknown, soft=False)).remote()
    with pytest.raises(skate.exceptions.TaskUnschedulableError):
        skate.get(hard, timeout=10)
