"""skate.util helpers: as_completed, map_unordered, list_named_actors, get_node_ip_address."""

from __future__ import annotations

import pytest

import skate
from skate import util


@skate.remote
def square(x):
    return x * x


def test_as_completed_yields_every_result(ray_start):
    refs = [square.remote(i) for i in range(25)]
    assert sorted(util.as_completed(refs, chunk_size=4)) == [i * i for i in range(25)]
    got_refs = list(util.as_completed(refs, chunk_size=30, yield_obj_refs=True))
    assert set(got_refs) == set(refs)
    with pytest.raises(ValueError):
        list(util.as_completed(refs, chunk_size=0))


def test_map_unordered_with_backpressure(ray_start):
    assert sorted(util.map_unordered(square, range(30), backpressure_size=5, chunk_size=2)) == [i * i for i in range(30)]
    assert sorted(util.map_unordered(square, range(5), backpressure_size=None)) == [i * i for i in range(5)]


def test_list_named_actors(ray_start):
    @skate.remote
    class A:
        pass

    keep = [A.options(name=n).remote() for n in ("x", "y")]
    A.options(name="z", namespace="other").remote()
    assert sorted(util.list_named_actors()) == ["x", "y"]
    everywhere = util.list_named_actors(all_namespaces=True)
    assert {"name": "z", "namespace": "other"} in everywhere
    assert len(keep) == 2


def test_get_node_ip_address(ray_start):
    nodes = skate.nodes()
    assert util.get_node_ip_address() in {n["NodeManagerAddress"] for n in nodes}
