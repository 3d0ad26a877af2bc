"""The state API's workers, objects and logs, and every process's stacks, on a real cluster."""

from __future__ import annotations

import os

import pytest
from conftest import wait_for

import skate
from skate._private import state_workers
from skate.util import state

pytestmark = pytest.mark.timeout(90)


@skate.remote
def blob(n: int) -> bytes:
    print("making a blob of", n)
    return b"z" * n


@skate.remote
class Sleeper:
    def pid(self) -> int:
        return os.getpid()

    def nap(self, gate: str) -> str:
        import time

        print("napping", flush=True)
        while not os.path.exists(gate):
            time.sleep(0.01)
        return "awake"


def test_workers_and_drivers_are_listed(ray_start):
    actor = Sleeper.remote()
    pid = skate.get(actor.pid.remote())
    workers = state.list_workers(limit=None)
    me = [w for w in workers if w.worker_type == "DRIVER" and w.pid == os.getpid()]
    assert len(me) == 1 and me[0].is_alive and me[0].job_id == skate.get_runtime_context().get_job_id()
    held = [w for w in workers if w.pid == pid]
    assert len(held) == 1 and held[0].worker_type == "WORKER" and held[0].actor_id == actor._actor_id.hex()
    assert held[0].node_id == skate.get_runtime_context().get_node_id()
    assert state.get_worker(held[0].worker_id).pid == pid
    assert state.list_workers(filters=[("worker_type", "=", "DRIVER")], limit=None) == me
    skate.kill(actor)


def test_objects_show_owner_size_and_reference_type(ray_start, tmp_path):
    big = blob.remote(300_000)
    skate.get(big)
    small = skate.put("tiny")
    gate = tmp_path / "gate"
    actor = Sleeper.remote()
    pending = actor.nap.remote(str(gate))
    try:
        objs = {o.object_id: o for o in state.list_objects(limit=None) if o.pid == os.getpid()}
        b = objs[big.hex()]
        assert b.owned and b.object_size >= 300_000 and b.reference_type == "LOCAL_REFERENCE"
        assert b.type == "DRIVER" and b.task_status == "FINISHED"
        assert objs[small.hex()].object_size > 0
        p = objs[pending.hex()]
        assert p.task_status == "PENDING" and p.reference_type == "USED_BY_PENDING_TASK"
        assert [o.pid for o in state.get_objects(big.hex())] == [os.getpid()]
        summary = state.summarize_objects()["cluster"]
        assert summary["total_objects"] >= 3 and summary["total_size_mb"] > 0.28
        assert summary["summary"]["disabled"]["ref_type_counts"]["USED_BY_PENDING_TASK"] >= 1
    finally:
        gate.touch()
    assert skate.get(pending) == "awake"
    del big, small, pending
    wait_for(lambda: not [o for o in state.list_objects(limit=None) if o.pid == os.getpid() and o.object_size > 1000],
             10, what="the freed objects to leave the list")


def test_logs_of_a_worker_an_actor_and_a_task(ray_start, tmp_path):
    ref = blob.remote(10)
    skate.get(ref)
    files = state.list_logs()
    assert {"gcs_server", "raylet", "worker_out"} <= set(files), files
    task = wait_for(lambda: [t for t in state.list_tasks(limit=None) if t.name == "blob"], 10, what="the task")[0]
    wait_for(lambda: "making a blob of 10" in "".join(state.get_log(task_id=task.task_id)), 10,
             what="the task's output in its worker's log")
    assert "making a blob of 10" in "".join(state.get_log(pid=task.worker_pid))
    actor = Sleeper.remote()
    gate = tmp_path / "gate"
    gate.touch()
    assert skate.get(actor.nap.remote(str(gate))) == "awake"
    aid = actor._actor_id.hex()
    wait_for(lambda: "napping" in "".join(state.get_log(actor_id=aid)), 10, what="the actor's output")
    only = "".join(state.get_log(filename=f"worker-{task.worker_pid}.out", tail=1))
    assert len(only.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="no log file"):
        "".join(state.get_log(filename="../token"))
    with pytest.raises(ValueError, match="no actor"):
        "".join(state.get_log(actor_id="00" * 16))
    skate.kill(actor)


def test_stacks_show_what_each_process_runs(ray_start, tmp_path):
    gate = tmp_path / "gate"
    actor = Sleeper.remote()
    ref = actor.nap.remote(str(gate))
    try:
        def napping() -> str | None:
            texts = [text for p, text in state_workers.stacks() if p.actor_id == actor._actor_id.hex()]
            return texts[0] if texts and "in nap" in texts[0] else None

        text = wait_for(napping, 20, what="the actor's stack to show nap()")
        assert "MainThread" in text
        def mine() -> str | None:
            texts = [text for p, text in state_workers.stacks() if p.pid == os.getpid()]
            assert len(texts) == 1
            return texts[0] if "test_stacks_show_what_each_process_runs" in texts[0] else None

        assert "MainThread" in wait_for(mine, 10, what="this driver's stack to show this test")
    finally:
        gate.touch()
    assert skate.get(ref) == "awake"
    skate.kill(actor)
