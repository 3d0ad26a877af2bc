"""skate.util helpers: as_completed and map_unordered."""

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
