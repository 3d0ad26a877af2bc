"""skate.util.queue.Queue: a FIFO queue shared by tasks and actors (Ray's semantics)."""

from __future__ import annotations

import asyncio

import pytest

import skate
from skate.util.queue import Empty, Full, Queue


def test_fifo_and_sizes(ray_start):
    q = Queue()
    assert q.empty() and not q.full()
    for i in range(5):
        q.put(i)
    assert q.qsize() == q.size() == len(q) == 5
    assert [q.get() for _ in range(5)] == list(range(5))
    q.put_nowait_batch([7, 8, 9])
    assert q.get_nowait_batch(2) == [7, 8]
    assert q.get_nowait() == 9
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(Empty):
        q.get_nowait_batch(1)
    q.shutdown()


def test_bounded_queue(ray_start):
    q = Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full):
        q.put(3, timeout=0.1)
    with pytest.raises(Full):
        q.put_nowait_batch([3])
    assert q.get() == 1
    q.put(3)
    assert q.get_nowait_batch(2) == [2, 3]
    q.shutdown(force=True)


def test_producers_and_consumers_in_tasks(ray_start):
    q = Queue()

    @skate.remote
    def produce(q, start):
        for i in range(start, start + 5):
            q.put(i)

    @skate.remote
    def consume(q, n):
        return [q.get(timeout=30) for _ in range(n)]

    got = consume.remote(q, 10)  # blocks in the actor until items arrive
    skate.get([produce.remote(q, 0), produce.remote(q, 100)])
    assert sorted(skate.get(got)) == list(range(5)) + list(range(100, 105))
    q.shutdown()


def test_async_put_and_get(ray_start):
    q = Queue(maxsize=1)

    async def main():
        await q.put_async("a")
        with pytest.raises(Full):
            await q.put_async("b", block=False)
        return await q.get_async(timeout=10)

    assert asyncio.run(main()) == "a"
    q.shutdown()
