"""Spilling and restoring run off the node daemon's event loop: it keeps
answering (heartbeats, requests) while gigabytes go to disk."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import skate
from skate._private import runtime

pytestmark = pytest.mark.timeout(180)

MB = 1 << 20


def _max_stall_while(fn) -> tuple[float, float]:
    """Runs ``fn`` on a thread while timing node_stats round trips to the node
    daemon; returns (longest round trip, how long ``fn`` took)."""
    core = runtime.current_or_none()
    done = threading.Event()
    took: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            took.append(time.perf_counter() - t0)
            done.set()

    t = threading.Thread(target=run)
    worst = 0.0
    t.start()
    while not done.is_set():
        t0 = time.perf_counter()
        core.request(core.raylet, "node_stats", timeout=60)
        worst = max(worst, time.perf_counter() - t0)
        done.wait(0.005)
    t.join()
    return worst, took[0]


def test_the_daemon_keeps_answering_while_it_spills_and_restores():
    skate.init(num_cpus=1, object_store_memory=1200 * MB)
    try:
        a = skate.put(np.ones(700 * MB // 8))  # ~700 MB
        refs: list = []
        worst, took = _max_stall_while(lambda: refs.append(skate.put(np.ones(700 * MB // 8))))
        core = runtime.current_or_none()
        stats = core.request(core.raylet, "node_stats")["store"]
        assert stats["spilled_bytes_total"] >= 700 * MB  # the first one went to disk
        assert worst < max(0.25, took / 3), f"a {took:.2f}s put that spilled stalled the daemon for {worst:.2f}s"
        # Reading the spilled one back restores it (spilling the other), again off the loop.
        worst, took = _max_stall_while(lambda: skate.get(a).sum())
        assert core.request(core.raylet, "node_stats")["store"]["restored_bytes_total"] >= 700 * MB
        assert worst < max(0.25, took / 3), f"a {took:.2f}s restore stalled the daemon for {worst:.2f}s"
        a = refs = None  # noqa: F841 - the objects go before shutdown
    finally:
        skate.shutdown()
