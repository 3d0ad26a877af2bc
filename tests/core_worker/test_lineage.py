"""Lineage reconstruction: a task result whose only copy died with its node is
rebuilt by running its task again (recursively); what cannot be rebuilt
raises Ray's errors."""

from __future__ import annotations

import numpy as np
import pytest

import skate
from skate import exceptions as exc

pytestmark = pytest.mark.timeout(120)

N = 200_000  # float64s: 1.6 MB, in shared memory


@skate.remote(resources={"w": 1})
def make(seed: int) -> np.ndarray:
    return np.full(N, float(seed))


@skate.remote(resources={"w": 1})
def plus_one(a: np.ndarray) -> np.ndarray:
    return a + 1


@skate.remote(resources={"w": 1})
def where() -> str:
    return skate.get_runtime_context().get_node_id()


def _lose_worker_node(cluster, node):
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL: its segments are gone with it
    return cluster.add_node(num_cpus=1, resources={"w": 1})


def test_a_lost_task_result_is_rebuilt(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    ref = make.remote(7)
    skate.wait([ref], fetch_local=False)  # the only copy stays on that node
    first = skate.get(where.remote())
    _lose_worker_node(cluster, node)
    value = skate.get(ref, timeout=60)  # rebuilt on the new node
    assert value.shape == (N,) and value[0] == 7.0
    assert skate.get(where.remote()) != first


def test_lost_arguments_are_rebuilt_first(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    a = make.remote(1)
    b = plus_one.remote(a)
    skate.wait([b], fetch_local=False)  # the only copy stays on that node
    _lose_worker_node(cluster, node)
    assert skate.get(b, timeout=60)[0] == 2.0
    assert skate.get(a, timeout=60)[0] == 1.0


def test_no_retries_left_means_reconstruction_fails(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    ref = make.options(max_retries=0).remote(3)
    skate.wait([ref], fetch_local=False)  # the only copy stays on that node
    _lose_worker_node(cluster, node)
    with pytest.raises(exc.ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        skate.get(ref, timeout=60)
    assert isinstance(info.value, exc.ObjectLostError)  # its base in Ray


def test_a_lost_put_object_is_not_rebuilt(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)

    @skate.remote(resources={"w": 1})
    class Holder:
        def put(self) -> list:
            return [skate.put(np.zeros(N))]

    h = Holder.remote()
    [inner] = skate.get(h.put.remote())
    _lose_worker_node(cluster, node)
    with pytest.raises(exc.ObjectLostError):  # its owner died with the node (OwnerDiedError)
        skate.get(inner, timeout=60)


def test_an_object_larger_than_this_store_is_copied_to_disk_not_lost(cluster):
    from skate._private import runtime

    cluster.add_node(num_cpus=1, resources={"w": 1}, object_store_memory=600 * (1 << 20))
    skate.init(address=cluster.address)

    @skate.remote(resources={"w": 1})
    def huge() -> np.ndarray:
        return np.ones(300 * (1 << 20) // 8)  # larger than the head's 256 MiB store

    ref = huge.options(max_retries=0).remote()
    skate.wait([ref], fetch_local=False)  # the only copy stays on that node
    value = skate.get(ref, timeout=60)  # pulled into a disk-backed segment on the head
    assert value.shape == (300 * (1 << 20) // 8,) and value[-1] == 1.0
    assert runtime.current().lineage.rebuilt == 0  # nothing was lost
    del value, ref


