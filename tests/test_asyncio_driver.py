"""asyncio in the driver: refs are awaitable in the user's own running loop (not
skate's I/O loop), with ``asyncio.gather``, ``asyncio.wait``, ``asyncio.wait_for``,
and ``ref.future()`` gives a ``concurrent.futures.Future``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

import skate


@skate.remote
def double(x):
    return 2 * x


@skate.remote
def fail():
    raise ValueError("failed remotely")


@skate.remote
def slow(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def test_await_in_the_users_loop(ray_start):
    async def main():
        loop = asyncio.get_running_loop()
        assert loop is not skate._private.runtime.current().loop
        return await double.remote(21)

    assert asyncio.run(main()) == 42


def test_gather_and_wait_for(ray_start):
    async def main():
        values = await asyncio.gather(*[double.remote(i) for i in range(10)])
        one = await asyncio.wait_for(double.remote(5), timeout=30)
        return values, one

    values, one = asyncio.run(main())
    assert values == [2 * i for i in range(10)] and one == 10


def test_asyncio_wait_takes_refs(ray_start, tmp_path):
    gate = tmp_path / "gate"

    async def main():
        fast = [double.remote(i) for i in range(3)]
        blocked = slow.remote(str(gate))
        done, pending = await asyncio.wait(fast + [blocked], timeout=1.0)
        assert done == set(fast) and pending == {blocked}
        done, pending = await asyncio.wait(fast + [blocked], return_when=asyncio.FIRST_COMPLETED)
        assert done and done <= set(fast)
        gate.touch()
        done, pending = await asyncio.wait([blocked])
        assert done == {blocked} and not pending
        return await blocked

    assert asyncio.run(main()) == "released"


def test_wait_for_times_out_and_errors_propagate(ray_start, tmp_path):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow.remote(str(tmp_path / "never")), timeout=0.2)
        with pytest.raises(ValueError, match="failed remotely"):
            await fail.remote()

    asyncio.run(main())


def test_future_is_a_concurrent_future(ray_start):
    fut = double.remote(4).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=30) == 8
    err = fail.remote().future()
    with pytest.raises(ValueError):
        err.result(timeout=30)
    done, _ = concurrent.futures.wait([double.remote(i).future() for i in range(5)], timeout=30)
    assert sorted(f.result() for f in done) == [0, 2, 4, 6, 8]

    async def main():
        return await asyncio.wrap_future(double.remote(7).future())

    assert asyncio.run(main()) == 14


def test_loops_on_several_threads(ray_start):
    results: list = []

    def run(k):
        async def main():
            return await asyncio.gather(*[double.remote(k * 10 + i) for i in range(5)])

        results.append(asyncio.run(main()))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(sorted, results)) == [[2 * (k * 10 + i) for i in range(5)] for k in range(3)]


def test_as_future_inside_and_outside_a_loop(ray_start):
    async def main():
        return await double.remote(3).as_future()

    assert asyncio.run(main()) == 6
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        fut = double.remote(8).as_future()  # no running loop: wraps the thread-safe future
        assert loop.run_until_complete(fut) == 16
    finally:
        asyncio.set_event_loop(None)
        loop.close()
