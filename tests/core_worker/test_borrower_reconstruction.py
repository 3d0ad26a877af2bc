"""Reconstruction started by a borrower: a process that holds a ref it does not
own, and finds every copy of the object gone, asks the owner to rebuild it
(follows Ray); what cannot be rebuilt raises Ray's errors at the borrower."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import wait_for

import skate
from skate import exceptions as exc
from skate._private import runtime
from skate.util import state

pytestmark = pytest.mark.timeout(120)

N = 200_000  # float64s: 1.6 MB, in shared memory


@skate.remote(resources={"w": 1})
def make(seed: int) -> np.ndarray:
    return np.full(N, float(seed))


@skate.remote(resources={"w": 1})
def first(a: np.ndarray) -> float:
    return float(a[0])


@skate.remote(resources={"w": 1})
def get_first(refs: list) -> float:
    return float(skate.get(refs[0], timeout=60)[0])


def _lose_worker_node(cluster, node):
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL: its segments are gone with it
    return cluster.add_node(num_cpus=1, resources={"w": 1})


def test_a_task_whose_argument_was_lost_has_its_owner_rebuild_it(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    a = make.remote(5)
    skate.wait([a], fetch_local=False)  # the only copy stays on that node
    _lose_worker_node(cluster, node)
    lineage = runtime.current().lineage
    before = lineage.rebuilt
    # The driver passes the ref it owns; the task, on the new node, finds the copy gone
    # and asks the driver (its owner) to rebuild it.
    assert skate.get(first.remote(a), timeout=60) == 5.0
    assert lineage.rebuilt == before + 1


def test_a_borrower_get_of_a_lost_object_has_its_owner_rebuild_it(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    a = make.remote(6)
    skate.wait([a], fetch_local=False)
    _lose_worker_node(cluster, node)
    lineage = runtime.current().lineage
    before = lineage.rebuilt
    # Nested in a list: the task borrows the ref and calls get() on it itself.
    assert skate.get([get_first.remote([a]), get_first.remote([a])], timeout=60) == [6.0, 6.0]
    assert lineage.rebuilt == before + 1  # two borrowers, one rebuild
    assert skate.get(a, timeout=60)[0] == 6.0  # the owner reads the new copy


def test_a_borrower_gets_the_owners_reconstruction_error(cluster):
    node = cluster.add_node(num_cpus=1, resources={"w": 1})
    skate.init(address=cluster.address)
    a = make.options(max_retries=0).remote(7)
    skate.wait([a], fetch_local=False)
    _lose_worker_node(cluster, node)
    with pytest.raises(exc.ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        skate.get(get_first.remote([a]), timeout=60)
    assert isinstance(info.value, exc.ObjectLostError)
    assert a.hex() in str(info.value)


def test_a_borrower_whose_owner_died_gets_owner_died_error(cluster):
    cluster.add_node(num_cpus=2, resources={"w": 2})
    skate.init(address=cluster.address)

    @skate.remote(num_cpus=0)
    class Owner:
        def make(self) -> list:
            return [make.remote(8)]  # this actor owns the result

    owner = Owner.remote()
    [ref] = skate.get(owner.make.remote(), timeout=60)
    assert skate.get(get_first.remote([ref]), timeout=60) == 8.0
    skate.kill(owner)
    # kill() returns at once (as in Ray): read the ref once the owner is gone.
    wait_for(lambda: state.get_actor(owner._actor_id.hex()).state == "DEAD", 30, what="the owner to die")
    with pytest.raises(exc.OwnerDiedError):
        skate.get(ref, timeout=60)
