"""Chaos: a workload runs while a chaos thread SIGKILLs workers, node daemons and
the control store (Redis-backed); no result may be lost.

Opt-in (``pytest -m soak``); ``SKATE_CHAOS_S`` sets how long it runs (120 s).
It prints completed work, lost results (must be 0), control-store restarts,
node replacements, workers killed, reconstructions and the longest stall.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import gcs_server_pid, wait_for

import skate
from skate._private import runtime, wire
from skate.cluster_utils import Cluster

CHAOS_S = float(os.environ.get("SKATE_CHAOS_S", "120"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(CHAOS_S) + 300)]


@skate.remote(max_retries=-1, resources={"w": 0.01})
def inner(x: int) -> int:
    return x * 2


@skate.remote(max_retries=-1, resources={"w": 0.01})
def outer(x: int) -> int:
    return sum(skate.get([inner.remote(x), inner.remote(x + 1)]))


@skate.remote(max_retries=-1, resources={"w": 0.01})
def big(x: int) -> np.ndarray:
    return np.full(128 * 1024, float(x))  # 1 MiB: a shared-memory result on a worker node


def _worker_pids(uds: str) -> list[int]:
    core = runtime.current_or_none()

    async def go() -> list[int]:
        conn = await wire.connect(uds, core.token, {})
        try:
            return (await conn.request("node_stats"))["pids"]
        finally:
            conn.close()

    try:
        return core.call(go(), timeout=5)
    except Exception:  # noqa: BLE001 - the node may be dying
        return []


def test_chaos_loses_no_results(redis_url, monkeypatch):
    # The chaos thread kills the control store more often than a real
    # head would tolerate (SKATE_GCS_MAX_RESTARTS_PER_MINUTE, 10).
    monkeypatch.setenv("SKATE_GCS_MAX_RESTARTS_PER_MINUTE", "1000")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_storage": redis_url})
    figures = {"batches": 0, "tasks": 0, "lost": 0, "gcs_restarts": 0, "nodes_replaced": 0, "workers_killed": 0,
               "longest_stall_s": 0.0}
    try:
        nodes = [c.add_node(num_cpus=2, resources={"w": 100}) for _ in range(2)]
        skate.init(address=c.address)
        core = runtime.current_or_none()
        stop = threading.Event()
        rng = random.Random(int(os.environ.get("SKATE_CHAOS_SEED", "1")))
        errors: list = []

        def chaos() -> None:
            try:
                while not stop.wait(rng.uniform(1.0, 3.0)):
                    what = rng.choice(["worker", "worker", "node", "gcs"])
                    if what == "worker":
                        victim = rng.choice(nodes)
                        pids = _worker_pids(victim.address_info["uds"]) if hasattr(victim, "address_info") else []
                        if not pids:
                            pids = [p.pid for p in psutil.Process(victim._proc.proc.pid).children(recursive=True)]
                        if pids:
                            try:
                                os.kill(rng.choice(pids), signal.SIGKILL)
                                figures["workers_killed"] += 1
                            except ProcessLookupError:
                                pass
                    elif what == "node":
                        victim = nodes.pop(rng.randrange(len(nodes)))
                        c.remove_node(victim, allow_graceful=False)
                        nodes.append(c.add_node(num_cpus=2, resources={"w": 100}))
                        figures["nodes_replaced"] += 1
                    else:
                        old = gcs_server_pid(c)
                        if old:
                            os.kill(old, signal.SIGKILL)
                            wait_for(lambda old=old: gcs_server_pid(c) not in (0, old), 30, what="a new control store")
                            figures["gcs_restarts"] += 1
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        t = threading.Thread(target=chaos, daemon=True)
        t.start()
        end = time.monotonic() + CHAOS_S
        k = 0
        try:
            while time.monotonic() < end and not errors:
                t0 = time.monotonic()
                outs = [outer.remote(k + i) for i in range(8)]
                bigs = [big.remote(k + i) for i in range(4)]
                try:
                    got = skate.get(outs, timeout=120)
                    assert got == [4 * (k + i) + 2 for i in range(8)]
                    arrays = skate.get(bigs, timeout=120)
                    assert [a[0] for a in arrays] == [float(k + i) for i in range(4)]
                    del arrays
                except Exception as e:  # noqa: BLE001 - counted: a lost result
                    figures["lost"] += 1
                    print(f"lost a batch: {type(e).__name__}: {e}")
                figures["tasks"] += 12 + 16
                figures["batches"] += 1
                figures["longest_stall_s"] = max(figures["longest_stall_s"], time.monotonic() - t0)
                k += 100
        finally:
            stop.set()
            t.join(60)
        figures["reconstructions"] = core.lineage.rebuilt
        print("chaos figures:", figures)
        assert not errors, errors
        assert figures["lost"] == 0, figures
    finally:
        c.shutdown()
