"""Concurrency groups, the system group, out-of-order execution (follows Ray).

A method blocked in one concurrency group must not block the others; each
test blocks one group on a gate file (or an event) and checks the others
still answer.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import skate


def _wait_file(path, limit=60.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)


@skate.remote(concurrency_groups={"io": 2, "compute": 1})
class Threaded:
    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=20)

    @skate.method(concurrency_group="io")
    def blocked_io(self, gate):
        _wait_file(gate)
        return "io"

    @skate.method(concurrency_group="io")
    def meet(self):
        self.barrier.wait()
        return threading.get_ident()

    @skate.method(concurrency_group="compute")
    def compute(self):
        return threading.current_thread().name

    def default(self):
        return "default"

    def blocked_default(self, gate):
        _wait_file(gate)
        return "default-done"


def test_threaded_groups_do_not_block_each_other(ray_start, tmp_path):
    gate = str(tmp_path / "gate")
    a = Threaded.remote()
    blocked = a.blocked_io.remote(gate)
    assert "compute" in skate.get(a.compute.remote(), timeout=20)  # runs on the group's own threads
    assert skate.get(a.default.remote(), timeout=20) == "default"
    # The default group busy: the others and __ray_ready__ (system group) still answer.
    busy_default = a.blocked_default.remote(gate)
    assert skate.get(a.__ray_ready__.remote(), timeout=20) is True
    assert "compute" in skate.get(a.compute.remote(), timeout=20)
    open(gate, "w").close()
    assert skate.get([blocked, busy_default], timeout=20) == ["io", "default-done"]


def test_group_max_concurrency_is_its_thread_count(ray_start):
    a = Threaded.remote()
    idents = skate.get([a.meet.remote(), a.meet.remote()], timeout=30)  # io has 2 threads: they meet
    assert len(set(idents)) == 2


def test_call_options_pick_the_group(ray_start, tmp_path):
    gate = str(tmp_path / "gate")
    a = Threaded.remote()
    blocked = a.blocked_default.remote(gate)
    # default group (1 thread) is busy; the same method sent to "compute" runs at once.
    assert skate.get(a.default.options(concurrency_group="compute").remote(), timeout=20) == "default"
    open(gate, "w").close()
    assert skate.get(blocked, timeout=20) == "default-done"


def test_unknown_group_raises(ray_start):
    a = Threaded.remote()
    with pytest.raises(ValueError, match="concurrency group 'nope'"):
        a.default.options(concurrency_group="nope").remote()


def test_async_groups_do_not_block_each_other(ray_start):
    @skate.remote(concurrency_groups={"io": 1, "compute": 1})
    class AsyncGroups:
        def __init__(self):
            self.release = asyncio.Event()

        @skate.method(concurrency_group="io")
        async def blocked(self):
            await self.release.wait()
            return "io"

        @skate.method(concurrency_group="io")
        async def io_quick(self):
            return "io-quick"

        @skate.method(concurrency_group="compute")
        async def release_it(self):
            self.release.set()
            return "released"

        async def default(self):
            return "default"

    a = AsyncGroups.remote()
    blocked = a.blocked.remote()
    queued_io = a.io_quick.remote()  # io has room for one: waits behind blocked
    assert skate.get(a.default.remote(), timeout=20) == "default"
    assert skate.get(a.__ray_ready__.remote(), timeout=20) is True
    ready, _ = skate.wait([queued_io], timeout=0.3)
    assert ready == []
    assert skate.get(a.release_it.remote(), timeout=20) == "released"
    assert skate.get([blocked, queued_io], timeout=20) == ["io", "io-quick"]


def test_allow_out_of_order_execution_validation(ray_start):
    @skate.remote
    class AsyncActor:
        async def m(self):
            pass

    with pytest.raises(ValueError, match="allow_out_of_order_execution"):
        AsyncActor.options(allow_out_of_order_execution=False).remote()

    @skate.remote(max_concurrency=2)
    class ThreadedActor:
        def m(self):
            pass

    with pytest.raises(ValueError, match="allow_out_of_order_execution"):
        ThreadedActor.options(allow_out_of_order_execution=False).remote()


def test_out_of_order_calls_do_not_wait_for_earlier_arguments(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    @skate.remote
    def slow_value(path):
        _wait_file(path)
        return 1

    @skate.remote(allow_out_of_order_execution=True)
    class Echo:
        def echo(self, x):
            return x

    @skate.remote
    class InOrder:
        def echo(self, x):
            return x

    firsts = []
    for cls, overtakes in ((Echo, True), (InOrder, False)):
        a = cls.remote()
        firsts.append(a.echo.remote(slow_value.remote(gate)))
        second = a.echo.remote(2)
        ready, _ = skate.wait([second], timeout=2 if overtakes else 0.5)
        assert (ready == [second]) is overtakes
    open(gate, "w").close()
    assert skate.get(firsts, timeout=30) == [1, 1]


@skate.remote
class Sync:
    def blocked(self, gate):
        _wait_file(gate)
        return "done"


def test_ready_and_kill_answer_while_a_sync_actor_is_busy(ray_start, tmp_path):
    # __ray_ready__ runs in the system group: a plain (sync) actor busy in a
    # call still answers it, and kill() ends it at once.
    gate = str(tmp_path / "gate")
    a = Sync.remote()
    busy = a.blocked.remote(gate)
    assert skate.get(a.__ray_ready__.remote(), timeout=20) is True
    ready, _ = skate.wait([busy], timeout=0.2)
    assert ready == []  # (the call is still running)
    other = Sync.remote()  # a second caller of a busy actor: a task holding a passed handle
    busy2 = other.blocked.remote(gate)

    @skate.remote
    def ask(h):
        return skate.get(h.__ray_ready__.remote(), timeout=20)

    assert skate.get(ask.remote(other), timeout=30) is True
    skate.kill(a)
    with pytest.raises(skate.exceptions.RayActorError):
        skate.get(busy, timeout=20)
    open(gate, "w").close()
    assert skate.get(busy2, timeout=20) == "done"


def test_call_slots_limit_order_and_cancel():
    """An async actor's slots (``CallSlots``): at most n calls hold one, waiters
    get one first come first served, and a waiter cancelled after it was handed
    a slot passes it on instead of losing it."""
    from skate._private.core_worker.actor_exec import CallSlots

    async def main():
        slots = CallSlots(2)
        held, order = [], []

        async def call(i, gate):
            if slots.free > 0:
                slots.free -= 1
            else:
                await slots.wait()
            held.append(i)
            order.append(i)
            try:
                await gate.wait()
            finally:
                held.remove(i)
                slots.release()

        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(call(i, gate)) for i in range(6)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert sorted(held) == [0, 1] and slots.free == 0 and len(slots.waiters) == 4
        # Cancelled while waiting: it leaves without a slot.
        tasks[2].cancel()
        # Handed a slot, then cancelled before it ran: the slot goes on to the next waiter.
        tasks[0].cancel()
        await asyncio.sleep(0)
        tasks[3].cancel()
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "CancelledError", "NoneType", "CancelledError", "CancelledError", "NoneType", "NoneType"
        ]
        assert order == [0, 1, 4, 5], order
        assert slots.free == 2 and not held

    asyncio.run(main())
