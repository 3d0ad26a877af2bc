"""ActorPool on a real 2-CPU cluster: ordering, timeouts, membership, dead actors."""

from __future__ import annotations

import asyncio

import pytest

import skate
from skate import exceptions as exc
from skate.util import ActorPool


@skate.remote
class Gate:
    """Holds callers until ``open`` is called."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self) -> bool:
        await self.event.wait()
        return True

    def open(self) -> None:
        self.event.set()


@skate.remote
class Worker:
    def double(self, v: int) -> int:
        return 2 * v

    def double_after(self, v: int, gate) -> int:
        skate.get(gate.wait.remote())
        return 2 * v

    def fail(self, v: int) -> int:
        raise ValueError(f"bad value {v}")

    @skate.method(num_returns=2)
    def pair(self, v: int) -> tuple:
        return v, -v

    def pid(self) -> int:
        import os

        return os.getpid()


def gated(gate, slow: set):
    """A pool function: values in ``slow`` wait for the gate, the others return at once."""

    def fn(actor, v):
        return actor.double_after.remote(v, gate) if v in slow else actor.double.remote(v)

    return fn


def test_map_returns_results_in_input_order(ray_start):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert not pool.has_next()


def test_map_uses_every_actor(ray_start):
    actors = [Worker.remote(), Worker.remote()]
    expected = set(skate.get([a.pid.remote() for a in actors]))
    pool = ActorPool(actors)
    assert set(pool.map(lambda a, v: a.pid.remote(), range(6))) == expected


def test_map_unordered_yields_ready_results_first(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    it = pool.map_unordered(gated(gate, {0}), [0, 1, 2])
    # 0 is held by the gate; 1 and 2 run on the other actor and come out first.
    assert [next(it), next(it)] == [2, 4]
    gate.open.remote()
    assert list(it) == [0]


def test_map_in_order_waits_for_a_slow_first_value(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    it = pool.map(gated(gate, {0}), [0, 1])
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.2)  # the iterator's next value is not ready either
    gate.open.remote()
    assert list(it) == [0, 2]


def test_map_drops_results_submitted_before_it(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(gated(gate, {100}), 100)
    pool.submit(lambda a, v: a.double.remote(v), 5)
    gate.open.remote()
    # The two earlier submissions are fetched or given up, never returned by map.
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]


def test_submit_has_next_get_next(ray_start):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    assert not pool.has_next()
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    pool.submit(lambda a, v: a.double.remote(v), 3)  # waits for a free actor
    assert pool.has_next()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next_unordered()


def test_get_next_timeout_keeps_the_task(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote()])
    pool.submit(gated(gate, {7}), 7)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.2)
    assert pool.has_next()
    gate.open.remote()
    assert pool.get_next(timeout=30) == 14


def test_get_next_ignore_if_timedout_skips_the_task(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(gated(gate, {7}), 7)
    pool.submit(lambda a, v: a.double.remote(v), 8)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0.2, ignore_if_timedout=True)
    assert pool.get_next() == 16
    assert not pool.has_next()
    gate.open.remote()


def test_get_next_unordered_timeout_and_ignore(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote()])
    pool.submit(gated(gate, {3}), 3)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next_unordered(timeout=0.2)
    assert pool.has_next()
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next()
    assert pool.has_free()  # the actor came back to the pool
    gate.open.remote()


def test_get_next_after_get_next_unordered_is_refused(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(gated(gate, {1}), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered() == 4  # the second finished first
    with pytest.raises(ValueError, match="not allowed to call get_next"):
        pool.get_next()
    gate.open.remote()
    assert pool.get_next_unordered() == 2


def test_has_free_and_pop_idle(ray_start):
    a1 = Worker.remote()
    pool = ActorPool([a1])
    assert pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    assert pool.has_free()
    assert pool.pop_idle() == a1
    assert not pool.has_free()
    assert pool.pop_idle() is None


def test_has_free_is_false_while_values_wait(ray_start):
    a1, a2 = Worker.remote(), Worker.remote()
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)  # waits
    pool.push(a2)  # takes the waiting value at once
    assert not pool.has_free()
    assert sorted([pool.get_next_unordered(), pool.get_next_unordered()]) == [2, 4]
    assert pool.has_free()


def test_push_adds_an_actor_and_refuses_a_member(ray_start):
    a1, a2 = Worker.remote(), Worker.remote()
    pool = ActorPool([a1])
    pool.push(a2)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)
    pool.submit(lambda a, v: a.double.remote(v), 1)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)  # busy members count too
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)
    assert pool.get_next() == 2
    expected = set(skate.get([a1.pid.remote(), a2.pid.remote()]))
    pool2 = ActorPool([])
    pool2.push(a1)
    pool2.push(a2)
    assert set(pool2.map(lambda a, v: a.pid.remote(), range(4))) == expected


def test_task_error_is_raised_and_actor_stays(ray_start):
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.fail.remote(v), 3)
    with pytest.raises(ValueError, match="bad value 3"):
        pool.get_next()
    assert pool.has_free()
    assert list(pool.map(lambda a, v: a.double.remote(v), [1])) == [2]


def test_dead_actor_leaves_the_pool(ray_start):
    dead, alive = Worker.remote(), Worker.remote()
    skate.get([dead.double.remote(0), alive.double.remote(0)])
    skate.kill(dead)
    pool = ActorPool([alive, dead])  # the last one is picked first
    pool.submit(lambda a, v: a.double.remote(v), 1)
    with pytest.raises(exc.ActorDiedError):
        pool.get_next()
    assert pool.pop_idle() == alive  # only the live actor came back
    assert pool.pop_idle() is None
    pool.push(alive)
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]


def test_functions_returning_several_refs(ray_start):
    gate = Gate.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(lambda a, v: a.pair.remote(v), 1)
    assert pool.get_next() == [1, -1]
    pool.submit(lambda a, v: [a.double_after.remote(v, gate), a.double.remote(v)], 4)
    pool.submit(lambda a, v: a.pair.remote(v), 2)
    assert pool.get_next_unordered() == [2, -2]
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.2)  # only half of the first list is ready
    gate.open.remote()
    assert pool.get_next_unordered() == [8, 8]


def test_map_unordered_waits_out_and_discards_earlier_results(ray_start):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    for v in (100, 200, 300):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]
    pool.submit(lambda a, v: a.fail.remote(v), 9)
    with pytest.raises(ValueError, match="bad value 9"):  # an earlier error surfaces, as in Ray
        pool.map_unordered(lambda a, v: a.double.remote(v), [1])
