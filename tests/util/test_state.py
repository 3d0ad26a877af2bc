"""The state API and timeline(): tasks from workers' task events, actors, nodes, jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import wait_for

import skate
from skate.util import state


@skate.remote
def square(x):
    return x * x


@skate.remote
def broken():
    raise ValueError("on purpose")


def _states(name: str) -> list:
    return [t for t in state.list_tasks(limit=None) if t.name == name]


@pytest.mark.timeout(60)
def test_tasks_are_listed_with_their_state_times_worker_and_error(ray_start):
    assert skate.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    with pytest.raises(ValueError):
        skate.get(broken.remote())
    wait_for(lambda: len([t for t in _states("square") if t.state == "FINISHED"]) == 3, 10, what="3 finished tasks")
    wait_for(lambda: [t.state for t in _states("broken")] == ["FAILED"], 10, what="the failed task")
    done = _states("square")[0]
    assert done.type == "NORMAL_TASK" and done.func_or_class_name.endswith("square")
    assert done.job_id == skate.get_runtime_context().get_job_id()
    assert done.worker_pid > 0 and len(done.node_id) == 32
    assert done.start_time_ms <= done.end_time_ms
    failed = _states("broken")[0]
    assert failed.error_type == "ValueError" and "on purpose" in failed.error_message
    assert failed["state"] == "FAILED"  # records read like dicts too
    assert state.get_task(failed.task_id).name == "broken"
    only_failed = state.list_tasks(filters=[("state", "=", "FAILED")], limit=None)
    assert {t.name for t in only_failed} == {"broken"}
    summary = state.summarize_tasks()["cluster"]["summary"]
    key = next(k for k in summary if k.endswith("square"))
    assert summary[key]["state_counts"] == {"FINISHED": 3}


@pytest.mark.timeout(60)
def test_a_named_task_keeps_its_function_name(ray_start):
    """options(name=...) names the task; func_or_class_name stays the function's (like Ray)."""
    assert skate.get(square.options(name="custom-name").remote(5)) == 25
    [task] = wait_for(lambda: [t for t in _states("custom-name") if t.state == "FINISHED"], 10, what="the named task")
    assert task.func_or_class_name.endswith("square")


@pytest.mark.timeout(60)
def test_a_running_task_is_listed_as_running(ray_start, tmp_path):
    gate = tmp_path / "go"

    @skate.remote
    def waits():
        import os
        import time

        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return 1

    ref = waits.remote()
    wait_for(lambda: [t.state for t in _states("waits")] == ["RUNNING"], 10, what="the task to show as running")
    gate.touch()
    assert skate.get(ref) == 1
    wait_for(lambda: [t.state for t in _states("waits")] == ["FINISHED"], 10, what="the task to finish")


def test_actors_nodes_and_jobs(ray_start):
    @skate.remote
    class Counter:
        def ping(self):
            return 1

    c = Counter.options(name="counter").remote()
    assert skate.get(c.ping.remote()) == 1
    actors = state.list_actors(filters=[("class_name", "=", "Counter")])
    assert len(actors) == 1 and actors[0].state == "ALIVE" and actors[0].name == "counter"
    assert state.get_actor(actors[0].actor_id).class_name == "Counter"
    assert state.summarize_actors()["cluster"]["summary"]["Counter"]["state_counts"] == {"ALIVE": 1}
    skate.kill(c)
    wait_for(lambda: state.get_actor(actors[0].actor_id).state == "DEAD", 10, what="the actor to be DEAD")
    nodes = state.list_nodes()
    assert len(nodes) == 1 and nodes[0].state == "ALIVE" and nodes[0].is_head_node
    assert nodes[0].resources_total["CPU"] == 2.0
    assert state.get_node(nodes[0].node_id).node_ip == nodes[0].node_ip
    jobs = state.list_jobs()
    me = skate.get_runtime_context().get_job_id()
    assert [j.status for j in jobs if j.job_id == me] == ["RUNNING"]


def test_filters_reject_unknown_predicates(ray_start):
    with pytest.raises(ValueError, match="unsupported filter predicate"):
        state.list_nodes(filters=[("state", ">", "x")])


@pytest.mark.timeout(60)
def test_timeline_writes_chrome_trace_events(ray_start, tmp_path):
    skate.get([square.remote(i) for i in range(4)])
    wait_for(lambda: len([t for t in _states("square") if t.state == "FINISHED"]) == 4, 10, what="4 finished tasks")
    events = skate.timeline()
    mine = [e for e in events if e["name"] == "square"]
    assert len(mine) == 4
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["ts"] > 0 for e in mine)
    path = tmp_path / "trace.json"
    assert skate.timeline(str(path)) is None
    assert len([e for e in json.loads(path.read_text()) if e["name"] == "square"]) == 4


def test_timeline_needs_init():
    with pytest.raises(RuntimeError, match="init"):
        skate.timeline()


def test_state_api_from_another_process_by_address(cluster, tmp_path):
    skate.init(address=cluster.address)
    skate.get(square.remote(3))
    skate.shutdown()
    code = (
        "from skate.util import state\n"
        f"nodes = state.list_nodes(address={cluster.address!r})\n"
        "print(len(nodes), nodes[0].state)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["1", "ALIVE"], out.stderr
