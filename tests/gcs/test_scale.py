"""The control store's cost with many nodes: node daemons on this machine, tiny resources.

The short default (12 nodes) runs in every suite; ``SKATE_SCALE_NODES=50``
gives the 50-node figure.  An idle cluster's control store must use under
5% of one core: nodes send a small liveness heartbeat every ``heartbeat_s``
and their free resources only when they change (batched by the control
store), so idle cost grows with N, not N².
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from conftest import wait_for

import skate

NODES = int(os.environ.get("SKATE_SCALE_NODES", "12"))


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _busy(p: psutil.Process, window: float) -> float:
    """The share of one core ``p`` used over ``window`` seconds."""
    before, t0 = _cpu(p), time.monotonic()
    time.sleep(window)  # a measurement window, not a wait for a state
    return (_cpu(p) - before) / (time.monotonic() - t0)


@pytest.mark.timeout(60 + 6 * NODES)
def test_idle_control_store_cost_with_many_nodes(monkeypatch):
    from skate.cluster_utils import Cluster

    monkeypatch.setenv("SKATE_PRESTART_WORKERS", "0")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 8 << 20})
    try:
        for _ in range(NODES - 1):
            c.add_node(num_cpus=1, object_store_memory=8 << 20)
        c.wait_for_nodes()
        gcs = psutil.Process(c._gcs_proc.proc.pid)
        skate.init(address=c.address)
        wait_for(lambda: len([n for n in skate.nodes() if n["Alive"]]) == NODES, 30, interval=0.2,
                 what="every node to be alive")

        @skate.remote(num_cpus=1)
        def one(i):
            return i

        # A burst over every node, then idle again.
        t0, cpu0 = time.monotonic(), _cpu(gcs)
        assert skate.get([one.remote(i) for i in range(20 * NODES)], timeout=120) == list(range(20 * NODES))
        burst = (_cpu(gcs) - cpu0) / (time.monotonic() - t0)
        wait_for(lambda: skate.available_resources().get("CPU") == NODES, 30, interval=0.2,
                 what="every CPU to be free again")
        idle = _busy(gcs, 5.0)
        print(f"\n{NODES} nodes: control store {idle:.1%} of a core idle, {burst:.1%} during a burst")
        assert idle < 0.05, f"an idle control store with {NODES} nodes uses {idle:.1%} of a core"
    finally:
        skate.shutdown()
        c.shutdown()
