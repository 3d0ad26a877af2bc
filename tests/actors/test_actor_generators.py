"""Generator actor methods, sync and async: streamed by default, "dynamic", a fixed
num_returns, errors mid-stream, backpressure, large items (follows Ray)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from conftest import wait_for

import skate


@skate.remote
class Counter:
    def __init__(self):
        self.produced = 0

    def count(self, n):
        for i in range(n):
            self.produced += 1
            yield i * 10

    def produced_so_far(self):
        return self.produced

    def fails_after(self, n):
        yield from range(n)
        raise ValueError("boom mid-stream")

    @skate.method(num_returns=3)
    def three(self):
        yield from ("a", "b", "c")

    @skate.method(num_returns="dynamic")
    def dynamic(self, n):
        yield from range(n)

    def big(self, n):
        for i in range(n):
            yield np.full(1_000_000, i, dtype=np.int64)

    @skate.method(_generator_backpressure_num_objects=2)
    def paced(self, n, log):
        for i in range(n):
            with open(log, "a") as f:
                f.write(".")
            yield i


@skate.remote
class AsyncCounter:
    async def count(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i + 100

    async def fails_after(self, n):
        for i in range(n):
            yield i
        raise KeyError("async boom")

    @skate.method(num_returns=2)
    async def two(self):
        yield "x"
        yield "y"

    @skate.method(num_returns="dynamic")
    async def dynamic(self, n):
        for i in range(n):
            yield i

    def sync_gen(self, n):
        yield from range(n)

    async def ping(self):
        return "pong"


def test_sync_generator_method_streams_by_default(ray_start):
    c = Counter.remote()
    gen = c.count.remote(4)
    assert isinstance(gen, skate.ObjectRefGenerator)
    assert [skate.get(r) for r in gen] == [0, 10, 20, 30]
    assert gen.is_finished()
    assert [skate.get(r) for r in c.count.options(num_returns="streaming").remote(2)] == [0, 10]


def test_async_generator_method_streams_and_async_iterates(ray_start):
    a = AsyncCounter.remote()
    assert [skate.get(r) for r in a.count.remote(3)] == [100, 101, 102]
    # A sync generator method of an async actor streams too.
    assert [skate.get(r) for r in a.sync_gen.remote(3)] == [0, 1, 2]

    async def consume():
        out = []
        async for ref in a.count.remote(3):
            out.append(await ref)
        return out

    assert asyncio.run(consume()) == [100, 101, 102]
    assert skate.get(a.ping.remote()) == "pong"


def test_exception_mid_stream_comes_after_the_earlier_items(ray_start):
    for handle, cls in ((Counter.remote(), ValueError), (AsyncCounter.remote(), KeyError)):
        refs = list(handle.fails_after.remote(2))
        assert len(refs) == 3
        assert [skate.get(r) for r in refs[:2]] == [0, 1]
        with pytest.raises(cls):
            skate.get(refs[2])


def test_fixed_num_returns_and_dynamic_on_actor_methods(ray_start):
    c, a = Counter.remote(), AsyncCounter.remote()
    assert skate.get(c.three.remote()) == ["a", "b", "c"]
    assert skate.get(a.two.remote()) == ["x", "y"]
    for handle in (c, a):
        ref = handle.dynamic.remote(3)
        assert isinstance(ref, skate.ObjectRef)
        assert [skate.get(r) for r in skate.get(ref)] == [0, 1, 2]
    # .options() picks the mode per call.
    assert skate.get(c.count.options(num_returns=2).remote(2)) == [0, 10]
    with pytest.raises(ValueError, match="yielded 3 values, but num_returns=2"):
        skate.get(c.count.options(num_returns=2).remote(3))


def test_large_items_of_a_generator_method_are_freed(ray_start):
    c = Counter.remote()
    assert [int(skate.get(r)[0]) for r in c.big.remote(3)] == [0, 1, 2]
    gen = c.big.remote(3)
    assert int(skate.get(next(gen))[-1]) == 0
    rest = list(gen)  # (dropping a stream mid-way while the actor is killed can leak an item: see the README)
    assert len(rest) == 2
    del gen, rest
    skate.kill(c)


@pytest.mark.timeout(60)
def test_backpressure_on_an_actor_method(ray_start, tmp_path):
    log = tmp_path / "produced"
    c = Counter.remote()
    gen = c.paced.remote(30, str(log))
    for k, ref in enumerate(gen, start=1):
        assert skate.get(ref) == k - 1
        # Never more than the limit ahead of what was taken (+1 being yielded).
        assert len(log.read_text()) <= k + 2 + 1
    assert len(log.read_text()) == 30
    # The option can also be given per call, and for the whole actor.
    gen = c.count.options(_generator_backpressure_num_objects=1).remote(5)
    assert [skate.get(r) for r in gen] == [0, 10, 20, 30, 40]
    paced = Counter.options(_actor_generator_backpressure_num_objects=1).remote()
    assert [skate.get(r) for r in paced.count.remote(4)] == [0, 10, 20, 30]


@skate.remote
class PutStreamer:
    def __init__(self):
        self.done = False

    def items(self, n, gate):
        yield [skate.put(0)]
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)  # (the rest once the caller has died)
        for i in range(1, n):
            yield [skate.put(i)]
        self.done = True

    def state(self):
        from skate._private import runtime

        return self.done, len(runtime.current().executor.held)


@skate.remote(max_retries=0)
def take_one_and_die(actor, gate):
    gen = actor.items.remote(20, gate)
    skate.get(next(gen))
    os._exit(1)


@pytest.mark.timeout(60)
def test_refs_held_for_a_caller_that_died_are_let_go(ray_start, tmp_path):
    """Items (and returns) hold their refs for the caller until it took them
    over; a caller that died never will: its holds go with its connection."""
    gate = str(tmp_path / "gate")
    a = PutStreamer.remote()
    with pytest.raises(skate.exceptions.WorkerCrashedError):
        skate.get(take_one_and_die.remote(a, gate), timeout=30)
    open(gate, "w").close()
    wait_for(lambda: skate.get(a.state.remote()) == (True, 0), 20, 0.1, "the dead caller's holds let go")
