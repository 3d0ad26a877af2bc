"""Soak: many threads mixing every way of waiting for results, while actors die.

Opt-in (``pytest -m soak``); ``SKATE_SOAK_S`` sets how long it runs (60 s).
It looks for hangs and lost replies in the reading hand-over between the I/O
loop and waiting threads: sync calls, lists, ``wait`` polls, ``await``,
fire-and-forget calls, timeouts, tasks, and actors killed mid-call.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest

import skate
from skate.exceptions import GetTimeoutError, RayActorError

SOAK_S = float(os.environ.get("SKATE_SOAK_S", "60"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SOAK_S) + 240)]


@skate.remote
class Echo:
    def echo(self, x):
        return x

    def slow(self, x, s):
        time.sleep(s)
        return x


@skate.remote
def square(x):
    return x * x


def _ops(actor_slot, rng):
    a = actor_slot[0]
    k = rng.randrange(1 << 30)
    op = rng.randrange(8)
    if op == 0:
        assert skate.get(a.echo.remote(k), timeout=30) == k
    elif op == 1:
        refs = [a.echo.remote(k + i) for i in range(20)]
        assert skate.get(refs, timeout=30) == [k + i for i in range(20)]
    elif op == 2:
        ref = a.echo.remote(k)
        deadline = time.monotonic() + 30
        while not skate.wait([ref], timeout=0)[0]:
            assert time.monotonic() < deadline, "a polled result never became ready"
        assert skate.get(ref) == k
    elif op == 3:

        async def main():
            return await asyncio.wait_for(a.echo.remote(k), 30)

        assert asyncio.run(main()) == k
    elif op == 4:
        for i in range(5):
            a.echo.remote(i)  # nobody asks for these
        assert skate.get(a.echo.remote(k), timeout=30) == k
    elif op == 5:
        ref = a.slow.remote(k, 0.05)
        try:
            skate.get(ref, timeout=0.01)
        except GetTimeoutError:
            pass
        assert skate.get(ref, timeout=30) == k
    elif op == 6:
        assert skate.get(square.remote(k % 1000), timeout=30) == (k % 1000) ** 2
    else:
        refs = [square.remote(i) for i in range(10)]
        ready, _ = skate.wait(refs, num_returns=10, timeout=30)
        assert len(ready) == 10


def test_mixed_waiting_with_dying_actors():
    skate.init(num_cpus=2)
    try:
        slots = [[Echo.remote()] for _ in range(3)]
        stop = time.monotonic() + SOAK_S
        errors: list = []
        counts = [0] * 4

        def worker(n):
            rng = random.Random(n)
            while time.monotonic() < stop and not errors:
                slot = slots[rng.randrange(len(slots))]
                try:
                    _ops(slot, rng)
                    counts[n] += 1
                except RayActorError:
                    pass  # the chaos thread killed it mid-call
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

        def chaos():
            rng = random.Random(99)
            while time.monotonic() < stop and not errors:
                time.sleep(rng.uniform(0.5, 2.0))
                slot = slots[rng.randrange(len(slots))]
                old, slot[0] = slot[0], Echo.remote()
                skate.kill(old)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        threads.append(threading.Thread(target=chaos))
        for t in threads:
            t.start()
        for t in threads:
            t.join(SOAK_S + 120)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert not errors, errors[:3]
        assert all(c > 0 for c in counts), counts
    finally:
        skate.shutdown()
