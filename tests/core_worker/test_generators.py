"""Generator tasks: streamed items, dynamic and fixed num_returns, errors, backpressure, cancel."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from conftest import wait_for

import skate
from skate import exceptions as exc


@skate.remote
def count_to(n):
    for i in range(n):
        yield i * 10


def test_generator_functions_stream_by_default(ray_start):
    gen = count_to.remote(5)
    assert isinstance(gen, skate.ObjectRefGenerator)
    assert [skate.get(r) for r in gen] == [0, 10, 20, 30, 40]
    assert gen.is_finished()
    with pytest.raises(StopIteration):
        next(gen)
    assert [skate.get(r) for r in count_to.options(num_returns="streaming").remote(2)] == [0, 10]


@pytest.mark.timeout(60)
def test_items_are_available_as_they_are_yielded(ray_start, tmp_path):
    gate = tmp_path / "go"

    @skate.remote
    def gated():
        yield "first"
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second"

    gen = gated.remote()
    # The first item arrives while the task is still running (waiting for the gate).
    assert skate.get(next(gen), timeout=20) == "first"
    gate.touch()
    assert skate.get(next(gen), timeout=20) == "second"
    assert list(gen) == []


def test_an_exception_mid_stream_follows_the_earlier_items(ray_start):
    @skate.remote
    def flaky():
        yield 1
        yield 2
        raise ValueError("boom")

    refs = list(flaky.remote())
    assert len(refs) == 3
    assert skate.get(refs[:2]) == [1, 2]
    with pytest.raises(ValueError, match="boom") as info:
        skate.get(refs[2])
    assert isinstance(info.value, exc.RayTaskError)


def test_num_returns_dynamic(ray_start):
    @skate.remote(num_returns="dynamic")
    def dyn(n):
        for i in range(n):
            yield np.full(200_000, i) if i == 1 else i  # one item large enough for shared memory

    ref = dyn.remote(3)
    assert isinstance(ref, skate.ObjectRef)
    inner = skate.get(ref)
    assert isinstance(inner, skate.DynamicObjectRefGenerator) and len(inner) == 3
    values = [skate.get(r) for r in inner]
    assert values[0] == 0 and values[2] == 2 and int(values[1][0]) == 1


def test_fixed_num_returns_consumes_the_generator(ray_start):
    @skate.remote(num_returns=3)
    def three():
        yield from ("a", "b", "c")

    assert skate.get(three.remote()) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="yielded 3 values, but num_returns=2"):
        skate.get(three.options(num_returns=2).remote()[0])


def test_async_iteration_and_async_generator_functions(ray_start):
    @skate.remote
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main():
        got = [await r async for r in count_to.remote(3)]
        got += [await r async for r in agen.remote(2)]
        return got

    assert asyncio.run(main()) == [0, 10, 20, 0, 1]


def test_large_items_go_through_shared_memory_and_are_freed(ray_start):
    @skate.remote
    def big(n):
        for i in range(n):
            yield np.full(1_000_000, i, dtype=np.int64)

    assert [int(skate.get(r)[0]) for r in big.remote(3)] == [0, 1, 2]
    # A generator dropped half-way frees what it did not hand out (the leak
    # check after the test finds no segment left).
    gen = big.remote(4)
    assert int(skate.get(next(gen))[-1]) == 0
    del gen


@pytest.mark.timeout(60)
def test_backpressure_keeps_the_producer_close_to_the_consumer(ray_start, tmp_path):
    log = tmp_path / "produced"

    @skate.remote(_generator_backpressure_num_objects=2)
    def producer(n):
        for i in range(n):
            with open(log, "a") as f:
                f.write(".")
            yield i

    gen = producer.remote(50)
    for k, ref in enumerate(gen, start=1):
        assert skate.get(ref) == k - 1
        produced = len(log.read_text())
        # Never more than the limit ahead of what was taken (+1 being yielded).
        assert produced <= k + 2 + 1, (k, produced)
    assert len(log.read_text()) == 50


@pytest.mark.timeout(60)
def test_cancel_stops_a_generator(ray_start):
    @skate.remote
    def forever():
        i = 0
        while True:
            yield i
            i += 1
            time.sleep(0.01)

    gen = forever.remote()
    assert skate.get(next(gen), timeout=20) == 0
    skate.cancel(gen)
    refs = list(gen)  # the stream ends, its last item the cancellation
    with pytest.raises(exc.TaskCancelledError):
        skate.get(refs[-1], timeout=20)


def test_a_non_generator_with_streaming_fails_clearly(ray_start):
    @skate.remote(num_returns="streaming")
    def plain():
        return 1

    refs = list(plain.remote())
    with pytest.raises(TypeError, match="not a generator function"):
        skate.get(refs[-1])


@pytest.mark.timeout(120)
def test_max_calls_workers_are_never_lent_again(ray_start):
    # A worker that exits after its reply (max_calls) was given back to the
    # pool and leased again in the gap: about half such calls crashed.
    @skate.remote(max_calls=1)
    def once(i):
        return os.getpid()

    pids = skate.get([once.remote(i) for i in range(20)], timeout=90)
    assert len(set(pids)) == 20


@skate.remote
def put_and_yield(n):
    for i in range(n):
        yield [skate.put(i * 7)]  # the worker owns each value; only the item holds its ref


@skate.remote
class PutGen:
    def items(self, n):
        for i in range(n):
            yield [skate.put(i * 7)]

    async def items_async(self, n):
        for i in range(n):
            yield [skate.put(i * 7)]

    def held(self):
        from skate._private import runtime

        return len(runtime.current().executor.held)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["task", "dynamic", "actor", "async actor"])
def test_refs_inside_yielded_items_outlive_the_producer_dropping_them(ray_start, how):
    """A ref that only an item holds stays alive until the caller took it
    over (as for a returned value's refs): read after the producer dropped
    its own ref (the generator has ended), every value is there."""
    n = 20
    if how == "task":
        gen = put_and_yield.remote(n)
    elif how == "dynamic":
        gen = skate.get(put_and_yield.options(num_returns="dynamic").remote(n))
    else:
        actor = PutGen.remote()
        gen = (actor.items if how == "actor" else actor.items_async).remote(n)
    item_refs = list(gen)
    assert len(item_refs) == n
    inner = [skate.get(r)[0] for r in item_refs]
    assert skate.get(inner, timeout=30) == [i * 7 for i in range(n)]
    if how != "task" and how != "dynamic":  # the caller took every item's refs over: the holds are let go
        wait_for(lambda: skate.get(actor.held.remote()) == 0, 20, 0.05, "the actor let its holds go")


@skate.remote
def put_and_report(n):
    from skate._private import runtime

    for i in range(n):
        yield len(runtime.current().executor.held), [skate.put(i)]


@pytest.mark.timeout(60)
def test_a_generator_task_lets_go_of_the_refs_of_items_taken_over(ray_start):
    """The worker's holds are released while its generator still runs (to its
    control endpoint: the exec loop is busy with the generator), so with
    backpressure a long stream holds a few items' refs, not all of them."""
    seen = []
    for ref in put_and_report.options(_generator_backpressure_num_objects=2).remote(30):
        held, inner = skate.get(ref)
        assert skate.get(inner[0]) == len(seen)
        seen.append(held)
        del inner, ref
    assert len(seen) == 30 and max(seen) <= 5, f"refs held by the producer, item by item: {seen}"


@skate.remote
def produce_then_mark(n, marker):
    for i in range(n):
        yield [skate.put(i)]
    open(marker, "w").close()


@pytest.mark.timeout(60)
def test_dropping_a_backpressured_generator_lets_its_producer_run_on(ray_start, tmp_path):
    """Nobody will take more items: the producer no longer waits for acks and
    runs to its end (follows Ray), and the items it still makes are freed."""
    marker = str(tmp_path / "done")
    gen = produce_then_mark.options(_generator_backpressure_num_objects=2).remote(50, marker)
    assert skate.get(skate.get(next(gen))[0]) == 0
    del gen
    wait_for(lambda: os.path.exists(marker), 20, 0.05, "the producer to reach its end")
