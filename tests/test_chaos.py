"""Chaos: a workload runs while a chaos thread SIGKILLs workers, actors, node
daemons and the control store (Redis-backed); no result may be lost.

The workload, in batches: nested tasks (each makes two more), tasks
returning 4 MiB arrays in shared memory on the worker nodes, tasks that
borrow those arrays (a ref nested in a list: they ``get`` it themselves,
so a lost copy is rebuilt at the borrower's request), and calls to
restartable actors (``max_restarts=-1``, ``max_task_retries=-1``) that
keep a count.  Every result is checked.

Opt-in (``pytest -m soak``); ``SKATE_CHAOS_S`` sets how long it runs
(300 s; CI runs it for 120 s as a step of its own, see ``.ci/run``),
``SKATE_CHAOS_SEED`` the chaos thread's choices.  It prints completed work,
lost results (must be 0), restarts, reconstructions and the longest stall.
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

CHAOS_S = float(os.environ.get("SKATE_CHAOS_S", "300"))
BIG = 4 << 20  # bytes of each large result
N_ACTORS = 3

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(CHAOS_S) + 400)]


@skate.remote(max_retries=-1, resources={"w": 0.01})
def inner(x: int) -> int:
    return x * 2


@skate.remote(max_retries=-1, resources={"w": 0.01})
def outer(x: int) -> int:
    return sum(skate.get([inner.remote(x), inner.remote(x + 1)]))


@skate.remote(max_retries=-1, resources={"w": 0.01})
def big(x: int) -> np.ndarray:
    return np.full(BIG // 8, float(x))  # a shared-memory result on a worker node


@skate.remote(max_retries=-1, resources={"w": 0.01})
def borrow(refs: list) -> float:
    a = skate.get(refs[0])  # a borrower's get: a lost copy is rebuilt by the owner
    return float(a[0] + a[-1])


@skate.remote(max_restarts=-1, max_task_retries=-1, resources={"w": 0.01}, num_cpus=0)
class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def step(self, x: int) -> tuple[int, int]:
        self.calls += 1  # starts again from 0 in a restarted actor
        return os.getpid(), x + 1


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


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def test_chaos_loses_no_results(redis_url, monkeypatch):
    # The chaos thread kills the control store more often than a real
    # head would tolerate (SKATE_GCS_MAX_RESTARTS_PER_MINUTE, 10).
    monkeypatch.setenv("SKATE_GCS_MAX_RESTARTS_PER_MINUTE", "1000")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_storage": redis_url})
    figures = {"batches": 0, "tasks": 0, "actor_calls": 0, "large_results_mb": 0, "lost": 0, "gcs_restarts": 0,
               "nodes_replaced": 0, "workers_killed": 0, "actors_killed": 0, "actor_restarts": 0,
               "longest_stall_s": 0.0}
    try:
        nodes = [c.add_node(num_cpus=2, resources={"w": 100}) for _ in range(2)]
        skate.init(address=c.address)
        core = runtime.current_or_none()
        actors = [Counter.remote() for _ in range(N_ACTORS)]
        actor_pids = [pid for pid, _ in skate.get([a.step.remote(0) for a in actors], timeout=120)]
        stop = threading.Event()
        rng = random.Random(int(os.environ.get("SKATE_CHAOS_SEED", "1")))
        errors: list = []

        def chaos() -> None:
            try:
                while not stop.wait(rng.uniform(1.0, 3.0)):
                    what = rng.choice(["worker", "worker", "actor", "node", "gcs"])
                    if what == "worker":
                        victim = rng.choice(nodes)
                        pids = _worker_pids(victim.address_info["uds"]) if hasattr(victim, "address_info") else []
                        if not pids:
                            pids = [p.pid for p in psutil.Process(victim._proc.proc.pid).children(recursive=True)]
                        if pids and _kill(rng.choice(pids)):
                            figures["workers_killed"] += 1
                    elif what == "actor":
                        if _kill(rng.choice(actor_pids)):
                            figures["actors_killed"] += 1
                    elif what == "node":
                        victim = nodes.pop(rng.randrange(len(nodes)))
                        c.remove_node(victim, allow_graceful=False)
                        nodes.append(c.add_node(num_cpus=2, resources={"w": 100}))
                        figures["nodes_replaced"] += 1
                    else:
                        old = gcs_server_pid(c)
                        if old and _kill(old):
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
                borrowed = [borrow.remote([b]) for b in bigs]
                calls = [a.step.remote(k) for a in actors]
                try:
                    got = skate.get(outs, timeout=120)
                    assert got == [4 * (k + i) + 2 for i in range(8)]
                    assert skate.get(borrowed, timeout=120) == [2.0 * (k + i) for i in range(4)]
                    arrays = skate.get(bigs, timeout=120)
                    assert [(a[0], a.nbytes) for a in arrays] == [(float(k + i), BIG) for i in range(4)]
                    del arrays
                    answers = skate.get(calls, timeout=120)
                    assert [x for _, x in answers] == [k + 1] * N_ACTORS
                    actor_pids[:] = [pid for pid, _ in answers]  # restarted ones have new pids
                except Exception as e:  # noqa: BLE001 - counted: a lost result
                    figures["lost"] += 1
                    print(f"lost a batch: {type(e).__name__}: {e}")
                figures["tasks"] += 8 * 3 + 4 + 4
                figures["actor_calls"] += N_ACTORS
                figures["large_results_mb"] += 4 * BIG >> 20
                figures["batches"] += 1
                figures["longest_stall_s"] = round(max(figures["longest_stall_s"], time.monotonic() - t0), 2)
                k += 100
        finally:
            stop.set()
            t.join(60)
        figures["reconstructions"] = core.lineage.rebuilt

        async def actor_records() -> list:
            return await (await core.gcs()).request("list_actors")

        figures["actor_restarts"] = sum(
            a["num_restarts"] for a in core.call(actor_records(), timeout=30) if a.get("class_name") == "Counter"
        )
        print("chaos figures:", figures)
        assert not errors, errors
        assert figures["lost"] == 0, figures
        del actors
    finally:
        skate.shutdown()
        c.shutdown()
