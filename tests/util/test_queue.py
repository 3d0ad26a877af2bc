"""skate.util.queue.Queue on a real 2-CPU cluster."""

from __future__ import annotations

import asyncio
import queue as std_queue
import time

import pytest
from conftest import wait_for

import skate
from skate import exceptions as exc
from skate.util import list_named_actors
from skate.util.queue import Empty, Full, Queue


def test_exceptions_are_the_standard_queue_errors():
    assert issubclass(Empty, std_queue.Empty)
    assert issubclass(Full, std_queue.Full)


def test_put_get_fifo_and_sizes(ray_start):
    q = Queue()
    assert q.empty() and not q.full()
    assert q.size() == q.qsize() == len(q) == 0
    for i in range(5):
        q.put(i)
    assert q.size() == q.qsize() == len(q) == 5
    assert not q.empty() and not q.full()  # unbounded: never full
    assert [q.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()
    q.shutdown()


def test_full_with_maxsize(ray_start):
    q = Queue(maxsize=2)
    assert q.maxsize == 2
    q.put("a")
    q.put("b")
    assert q.full()
    with pytest.raises(Full) as info:
        q.put("c", block=False)
    assert isinstance(info.value, std_queue.Full)
    with pytest.raises(Full):
        q.put_nowait("c")
    assert q.get() == "a"
    q.put_nowait("c")
    assert [q.get_nowait(), q.get_nowait()] == ["b", "c"]
    q.shutdown()


def test_get_without_blocking_on_empty_raises_empty(ray_start):
    q = Queue()
    with pytest.raises(Empty) as info:
        q.get(block=False)
    assert isinstance(info.value, std_queue.Empty)
    with pytest.raises(Empty):
        q.get_nowait()
    q.shutdown()


def test_get_timeout_raises_empty_after_the_timeout(ray_start):
    q = Queue()
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - start >= 0.3
    q.shutdown()


def test_put_timeout_raises_full_after_the_timeout(ray_start):
    q = Queue(maxsize=1)
    q.put(1)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(2, timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert q.size() == 1
    q.shutdown()


def test_negative_timeout_is_refused(ray_start):
    q = Queue()
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    q.shutdown()


@skate.remote
def consume(q, n: int) -> list:
    return [q.get() for _ in range(n)]


@skate.remote
def produce(q, items: list) -> None:
    for item in items:
        q.put(item)


def test_blocked_get_wakes_on_put_from_elsewhere(ray_start):
    q = Queue()
    ref = consume.remote(q, 2)
    ready, _ = skate.wait([ref], timeout=0.3)
    assert not ready  # the consumer waits inside get()
    q.put("x")
    q.put("y")
    assert skate.get(ref, timeout=30) == ["x", "y"]
    q.shutdown()


def test_blocked_put_wakes_on_get(ray_start):
    q = Queue(maxsize=1)
    q.put(0)
    ref = produce.remote(q, [1, 2])
    ready, _ = skate.wait([ref], timeout=0.3)
    assert not ready  # the producer waits for room
    assert [q.get(timeout=30) for _ in range(3)] == [0, 1, 2]
    skate.get(ref, timeout=30)
    q.shutdown()


def test_producers_and_consumers_in_tasks(ray_start):
    q = Queue(maxsize=3)
    producers = [produce.remote(q, list(range(k * 10, k * 10 + 5))) for k in range(2)]
    consumers = [consume.remote(q, 5) for _ in range(2)]
    skate.get(producers, timeout=60)
    got = sum(skate.get(consumers, timeout=60), [])
    assert sorted(got) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    q.shutdown()


def test_put_nowait_batch(ray_start):
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([4, 5])
    assert q.size() == 3  # all or nothing
    q.put_nowait_batch(iter([4]))
    with pytest.raises(TypeError, match="Iterable"):
        q.put_nowait_batch(5)
    assert [q.get() for _ in range(4)] == [1, 2, 3, 4]
    q.shutdown()


def test_get_nowait_batch(ray_start):
    q = Queue()
    q.put_nowait_batch(["a", "b", "c"])
    assert q.get_nowait_batch(2) == ["a", "b"]
    with pytest.raises(Empty, match="Cannot get 2 items"):
        q.get_nowait_batch(2)
    assert q.size() == 1  # all or nothing
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError, match="int"):
        q.get_nowait_batch(1.0)
    with pytest.raises(ValueError, match="nonnegative"):
        q.get_nowait_batch(-1)
    assert q.get_nowait_batch(1) == ["c"]
    q.shutdown()


def test_async_put_and_get_in_the_driver(ray_start):
    q = Queue(maxsize=1)

    async def main() -> list:
        await q.put_async(1)
        with pytest.raises(Full):
            await q.put_async(2, block=False)
        with pytest.raises(Full):
            await q.put_async(2, timeout=0.1)
        with pytest.raises(ValueError):
            await q.put_async(2, timeout=-1)
        first = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        with pytest.raises(ValueError):
            await q.get_async(timeout=-1)
        # a waiting get_async is served by a later put
        waiter = asyncio.ensure_future(q.get_async(timeout=30))
        await q.put_async("later")
        return [first, await waiter]

    assert asyncio.run(main()) == [1, "later"]
    q.shutdown()


@skate.remote
class AsyncUser:
    async def relay(self, src, dst, n: int) -> int:
        for _ in range(n):
            await dst.put_async(await src.get_async())
        return n


def test_async_methods_inside_an_async_actor(ray_start):
    src, dst = Queue(), Queue()
    user = AsyncUser.remote()
    ref = user.relay.remote(src, dst, 3)
    src.put_nowait_batch([1, 2, 3])
    assert skate.get(ref, timeout=30) == 3
    assert dst.get_nowait_batch(3) == [1, 2, 3]
    src.shutdown()
    dst.shutdown()


def test_actor_options_are_applied(ray_start):
    q = Queue(actor_options={"name": "jobs", "num_cpus": 1})
    q.put(1)
    assert "jobs" in list_named_actors()
    wait_for(lambda: skate.available_resources().get("CPU", 0) == 1, 15, what="the queue actor to hold a CPU")
    same = skate.get_actor("jobs")
    assert skate.get(same.qsize.remote()) == 1
    q.shutdown()
    wait_for(lambda: skate.available_resources().get("CPU", 0) == 2, 15, what="the CPU to come back")


def test_invalid_actor_option_is_refused(ray_start):
    with pytest.raises(ValueError, match="Invalid option"):
        Queue(actor_options={"no_such_option": 1})


def test_shutdown_ends_the_actor(ray_start):
    q = Queue()
    q.put(1)
    handle = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(exc.ActorDiedError):
        skate.get(handle.qsize.remote(), timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        q.get()
    q.shutdown()  # a second shutdown does nothing


def test_forced_shutdown_fails_waiting_callers(ray_start):
    q = Queue()
    ref = consume.remote(q, 1)
    ready, _ = skate.wait([ref], timeout=0.3)
    assert not ready
    q.shutdown(force=True)
    with pytest.raises(exc.RayError):
        skate.get(ref, timeout=30)  # the task's get() saw the actor die


def test_shutdown_grace_period_falls_back_to_kill(ray_start):
    q = Queue()
    handle = q.actor
    q.put(1)
    q.shutdown(grace_period_s=0)  # no time to exit on its own: killed
    with pytest.raises(exc.ActorDiedError):
        skate.get(handle.qsize.remote(), timeout=30)
