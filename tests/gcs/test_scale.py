"""The control store's cost with many nodes: node daemons on this machine, tiny resources.

The short default (12 nodes) runs in every suite (``SKATE_SCALE_NODES``
changes it); the 50-node run is opt-in (``-m soak``).  Both measure the
control store's CPU and the messages per second it receives and publishes
(``gcs_stats``), idle and under a task burst.  An idle cluster's control
store must use under 5% of one core: nodes send a small liveness heartbeat
every ``heartbeat_s`` and their free resources only when they change
(batched by the control store), so idle cost grows with N, not N².
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from conftest import wait_for

import skate
from skate._private import runtime
from skate._private.config import CONFIG

NODES = int(os.environ.get("SKATE_SCALE_NODES", "12"))


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _busy(p: psutil.Process, window: float) -> float:
    """The share of one core ``p`` used over ``window`` seconds."""
    before, t0 = _cpu(p), time.monotonic()
    time.sleep(window)  # a measurement window, not a wait for a state
    return (_cpu(p) - before) / (time.monotonic() - t0)


def _stats() -> tuple[float, int, int]:
    """(now, messages received, messages published) of the control store."""
    got = runtime.current_or_none().gcs_call("gcs_stats")
    return time.monotonic(), got["received"], got["published"]


def _rates(before: tuple, after: tuple) -> tuple[float, float]:
    """Messages per second received and published between two ``_stats``;
    the two ``gcs_stats`` requests themselves are not counted."""
    dt = after[0] - before[0]
    return (after[1] - before[1] - 1) / dt, (after[2] - before[2]) / dt


def _measure(nodes: int) -> dict:
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 8 << 20})
    try:
        for _ in range(nodes - 1):
            c.add_node(num_cpus=1, object_store_memory=8 << 20)
        c.wait_for_nodes()
        gcs = psutil.Process(c._gcs_proc.proc.pid)
        skate.init(address=c.address)
        wait_for(lambda: len([n for n in skate.nodes() if n["Alive"]]) == nodes, 30, interval=0.2,
                 what="every node to be alive")

        @skate.remote(num_cpus=1)
        def one(i):
            return i

        # A burst over every node, then idle again.
        s0, cpu0 = _stats(), _cpu(gcs)
        assert skate.get([one.remote(i) for i in range(20 * nodes)], timeout=120) == list(range(20 * nodes))
        s1, cpu1 = _stats(), _cpu(gcs)
        burst_in, burst_out = _rates(s0, s1)
        burst = (cpu1 - cpu0) / (s1[0] - s0[0])
        # Idle: every CPU free, and no lease request of the burst still out (one
        # granted late would take and give back a CPU inside the window).
        submitter = runtime.current_or_none().submitter
        wait_for(lambda: all(not ks.requests and not ks.leases for ks in list(submitter.keys.values()))
                 and skate.available_resources().get("CPU") == nodes, 30, interval=0.2,
                 what="every CPU to be free again and no lease request out")
        s2 = _stats()
        idle = _busy(gcs, 5.0)
        idle_in, idle_out = _rates(s2, _stats())
        return {"idle_cpu": idle, "burst_cpu": burst, "idle_in": idle_in, "idle_out": idle_out,
                "burst_in": burst_in, "burst_out": burst_out}
    finally:
        skate.shutdown()
        c.shutdown()


def _check(nodes: int, m: dict) -> None:
    print(f"\n{nodes} nodes: control store {m['idle_cpu']:.1%} of a core and {m['idle_in']:.0f} msgs/s in, "
          f"{m['idle_out']:.0f} out idle; {m['burst_cpu']:.1%}, {m['burst_in']:.0f} in, "
          f"{m['burst_out']:.0f} out during a burst")
    assert m["idle_cpu"] < 0.05, f"an idle control store with {nodes} nodes uses {m['idle_cpu']:.1%} of a core"
    # Idle, each node sends its liveness heartbeat and nothing else: O(N) messages, none fanned out.
    assert m["idle_in"] <= 1.5 * nodes / CONFIG.heartbeat_s + 5, m
    assert m["idle_out"] <= 5, m


@pytest.mark.timeout(60 + 6 * NODES)
def test_idle_control_store_cost_with_many_nodes(monkeypatch):
    monkeypatch.setenv("SKATE_PRESTART_WORKERS", "0")
    _check(NODES, _measure(NODES))


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_control_store_cost_with_50_nodes(monkeypatch):
    monkeypatch.setenv("SKATE_PRESTART_WORKERS", "0")
    _check(50, _measure(50))
