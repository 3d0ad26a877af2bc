"""skate.util.ActorPool: calls spread over a fixed set of actors (Ray's semantics)."""

from __future__ import annotations

import pytest

import skate
from skate.util import ActorPool


@skate.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def pid(self, _):
        import os

        return os.getpid()

    def wait_file(self, path):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return "released"

    def fail(self, v):
        raise ValueError(f"bad {v}")


def test_map_in_order_over_every_actor(ray_start):
    actors = [Doubler.remote(), Doubler.remote()]
    pool = ActorPool(actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == [2 * i for i in range(10)]
    pids = set(pool.map(lambda a, v: a.pid.remote(v), range(10)))
    assert len(pids) == 2  # both actors took calls
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [3, 1, 2])) == [2, 4, 6]


def test_submit_queues_beyond_the_actors_and_get_next(ray_start):
    pool = ActorPool([Doubler.remote()])
    for v in (1, 2, 3):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert not pool.has_free() and pool.has_next()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next() and pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()


def test_get_next_unordered_then_in_order(ray_start):
    pool = ActorPool([Doubler.remote(), Doubler.remote(), Doubler.remote()])
    for v in range(3):
        pool.submit(lambda a, v: a.double.remote(v), v)
    first = pool.get_next_unordered()
    rest = [pool.get_next(), pool.get_next()]
    assert sorted([first, *rest]) == [0, 2, 4]


def test_timeouts(ray_start, tmp_path):
    gate = tmp_path / "gate"
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.wait_file.remote(v), str(gate))
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.2)
    assert pool.has_next()  # still there
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.2, ignore_if_timedout=True)
    assert not pool.has_next()  # dropped; its actor is back in the pool
    gate.touch()
    pool.submit(lambda a, v: a.double.remote(v), 5)
    assert pool.get_next(timeout=30) == 10


def test_errors_propagate_and_the_actor_comes_back(ray_start):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.fail.remote(v), 1)
    with pytest.raises(ValueError, match="bad 1"):
        pool.get_next()
    assert pool.has_free()


def test_push_and_pop_idle(ray_start):
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    with pytest.raises(ValueError):
        pool.push(a)
    pool.push(b)
    popped = {pool.pop_idle(), pool.pop_idle()}
    assert popped == {a, b}
    assert pool.pop_idle() is None
