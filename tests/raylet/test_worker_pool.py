"""The worker pool under bursts, and a zygote that dies."""

from __future__ import annotations

import psutil
import pytest
from conftest import pid_gone, wait_for

import skate


@skate.remote(num_cpus=0)
class Pinger:
    def ping(self):
        return 1


def _raylet() -> psutil.Process:
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("skate::raylet"):
                return p
        except psutil.NoSuchProcess:
            pass
    raise AssertionError("no node daemon among this test's processes")


@pytest.mark.timeout(120)
def test_a_burst_of_200_actor_creations_on_one_node(ray_start):
    # Creations used to fail with BlockingIOError when the zygote's socket was
    # full, after which the zygote was lost for every later creation.
    actors = [Pinger.remote() for _ in range(200)]
    assert sum(skate.get([a.ping.remote() for a in actors], timeout=90)) == 200
    for a in actors:
        skate.kill(a)


@pytest.mark.timeout(60)
def test_a_dead_zygote_is_replaced(ray_start):
    first = Pinger.remote()
    assert skate.get(first.ping.remote()) == 1
    zygotes = _raylet().children()  # workers are the zygote's children
    assert len(zygotes) == 1, zygotes
    zygotes[0].kill()
    wait_for(lambda: pid_gone(zygotes[0].pid), 10, what="the zygote to exit")
    # Later creations get a new zygote.
    later = [Pinger.remote() for _ in range(3)]
    assert skate.get([a.ping.remote() for a in later], timeout=30) == [1, 1, 1]

