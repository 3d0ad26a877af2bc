"""The dashboard's decisions without a cluster: the hang warning, the waiting view, the default."""

from __future__ import annotations

import pytest

from skate._private import dashboard_launch
from skate.dashboard import collect


def _snap(taken: float, tasks: list[dict], demands: list | None = None, waits: list | None = None) -> collect.Snapshot:
    snap = collect.Snapshot(taken=taken, tasks=tasks, waits=waits or [])
    snap.nodes = [{"node_id": "n1", "ip": "127.0.0.1", "stats": {"demands": demands or []}}]
    snap.task_counts = {}
    for t in tasks:
        key = (t["name"], t["state"])
        snap.task_counts[key] = snap.task_counts.get(key, 0) + 1
    return snap


def _task(tid: str, state: str, end: float | None = None) -> dict:
    return {"task_id": tid, "name": "f", "state": state, "end_time_ms": end, "duration_ms": 5.0}


def test_hang_warning_needs_pending_work_and_no_progress(monkeypatch):
    monkeypatch.setenv("SKATE_DASHBOARD_HANG_S", "10")
    c = collect.Collector("127.0.0.1:1", b"t")
    running = [_task("a", "RUNNING")]
    for t in (0.0, 5.0, 11.0):
        snap = _snap(t, running)
        c._track_progress(snap)
    assert c.hang(snap) == {"seconds": 11.0, "threshold_s": 10.0, "pending": ["1 running task(s)"]}
    # A task ending is progress: the clock starts again.
    snap = _snap(12.0, [_task("a", "FINISHED", 12_000), _task("b", "RUNNING")])
    c._track_progress(snap)
    assert c.hang(snap) is None
    # Nothing pending: no hang, however long nothing happens.
    idle = _snap(100.0, [_task("a", "FINISHED", 12_000)])
    c._track_progress(idle)
    assert c.hang(_snap(200.0, [_task("a", "FINISHED", 12_000)])) is None


def test_waiting_view_links_blocked_calls_to_tasks_and_requests():
    waits = [{"pid": 7, "node_id": "n1", "worker_id": "w", "job_id": 1, "driver": True, "what": "driver",
              "blocked": [{"call": "get", "since": 90.0, "n": 2, "objects": ["o1", "o2"],
                           "tasks": [["a", "f"], ["z", "g"]], "task": ""}],
              "actors": [{"actor_id": "x", "class_name": "A", "queued": 3, "inflight": 1, "state": "ALIVE"}]}]
    snap = _snap(100.0, [_task("a", "RUNNING")], demands=[{"resources": {"CPU": 64}, "infeasible": True}], waits=waits)
    view = collect.waiting(snap, None)
    (b,) = view["blocked"]
    assert b["who"] == "driver" and b["seconds"] == 10.0 and b["n"] == 2
    assert b["on"] == [{"task_id": "a", "name": "f", "state": "RUNNING"}, {"task_id": "z", "name": "g", "state": "PENDING"}]
    assert view["demands"] == [{"node_id": "n1", "ip": "127.0.0.1", "resources": {"CPU": 64}, "infeasible": True}]
    assert view["actor_calls"][0]["caller_pid"] == 7 and view["actor_calls"][0]["queued"] == 3
    assert view["pending"] == ["1 running task(s)", "1 queued resource request(s)", "1 blocked get/wait call(s)",
                               "4 actor call(s) without a reply"]


def test_include_dashboard_default(monkeypatch):
    from skate._private.config import CONFIG

    monkeypatch.setattr(CONFIG, "include_dashboard", "")
    monkeypatch.setattr(dashboard_launch, "available", lambda: False)
    assert dashboard_launch.want(None, "x") is False  # like Ray: only when the extra is installed
    assert dashboard_launch.want(False, "x") is False
    with pytest.raises(RuntimeError, match=r"pip install 'skate\[dashboard\]'"):
        dashboard_launch.want(True, "init(include_dashboard=True)")
    monkeypatch.setattr(dashboard_launch, "available", lambda: True)
    assert dashboard_launch.want(None, "x") is True
    monkeypatch.setattr(CONFIG, "include_dashboard", "0")
    assert dashboard_launch.want(None, "x") is False and dashboard_launch.want(True, "x") is True


def test_credential_is_an_hmac_of_the_token_and_the_link_carries_it():
    cred = dashboard_launch.credential(b"abc")
    assert len(cred) == 64 and cred != dashboard_launch.credential(b"abd") and "abc" not in cred
    assert dashboard_launch.link("127.0.0.1:8265", b"abc") == f"http://127.0.0.1:8265/?token={cred}"
    assert dashboard_launch.link("::1:8265", b"abc").startswith("http://[::1]:8265/")
