"""The state API (``skate.util.state``) and ``timeline()``: what the cluster runs and ran.

Tasks come from the task events workers send the control store (the last
``Config.task_events_max`` tasks); actors, nodes and jobs from its tables.
Every function works from a connected driver, or, with ``address=``, from any
process on a machine that knows the cluster's token (like ``skate status``).
Names, fields and filters follow Ray 2.60's ``ray.util.state``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from skate._private import runtime

DEFAULT_LIMIT = 100


class _State:
    """A record of the state API: attributes, or ``record["field"]`` (follows Ray's schemas)."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TaskState(_State):
    task_id: str
    name: str
    state: str  # RUNNING, FINISHED or FAILED
    job_id: str
    type: str  # NORMAL_TASK, ACTOR_TASK or ACTOR_CREATION_TASK
    func_or_class_name: str
    node_id: str
    worker_id: str
    worker_pid: int
    actor_id: str | None = None
    attempt_number: int = 0
    error_type: str | None = None
    error_message: str | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None


@dataclasses.dataclass
class ActorState(_State):
    actor_id: str
    class_name: str
    state: str  # PENDING_CREATION, ALIVE, RESTARTING or DEAD
    job_id: str
    name: str
    ray_namespace: str | None
    node_id: str | None = None
    pid: int | None = None
    death_cause: str | None = None
    is_detached: bool = False
    num_restarts: int = 0


@dataclasses.dataclass
class NodeState(_State):
    node_id: str
    node_ip: str
    is_head_node: bool
    state: str  # ALIVE or DEAD
    node_name: str
    resources_total: dict
    labels: dict
    state_message: str | None = None


@dataclasses.dataclass
class JobState(_State):
    job_id: str | None  # the driver's; None for a submitted job whose entrypoint has not called init()
    type: str  # DRIVER, or SUBMISSION for a job submitted with skate.job_submission
    status: str  # a driver's: RUNNING or SUCCEEDED (it ended); a submission's: its JobStatus
    driver_pid: int | None
    namespace: str | None
    start_time: int
    end_time: int | None = None
    submission_id: str | None = None
    entrypoint: str | None = None
    message: str | None = None
    error_type: str | None = None
    driver_exit_code: int | None = None


@dataclasses.dataclass
class PlacementGroupState(_State):
    placement_group_id: str
    name: str
    creator_job_id: str
    state: str  # PENDING, CREATED, RESCHEDULING or REMOVED
    strategy: str
    bundles: list  # [{"bundle_id", "node_id", "unit_resources"}]
    is_detached: bool = False
    stats: dict | None = None


def _job_hex(job: int) -> str:
    return int(job).to_bytes(4, "little").hex()


def _call(method: str, body: Any = None, address: str | None = None) -> Any:
    core = runtime.current_or_none()
    if core is not None and address is None:
        return core.gcs_call(method, body)
    from skate._private import discovery

    if core is None and address is None:
        raise RuntimeError("not connected to a cluster: call skate.init() first, or pass address=")
    gcs_address = discovery.resolve_address(address)
    if gcs_address is None:
        raise ConnectionError("no running skate cluster found")
    return discovery.request_gcs(discovery.credentials(gcs_address), method, body)


def _filter(records: list, filters: list | None, limit: int | None) -> list:
    for key, op, value in filters or ():
        if op not in ("=", "!="):
            raise ValueError(f"unsupported filter predicate {op!r}: use '=' or '!='")
        records = [r for r in records if (str(getattr(r, key, None)) == str(value)) == (op == "=")]
    return records if limit is None else records[:limit]


def _task(rec: dict) -> TaskState:
    actor = rec.get("actor_id")
    return TaskState(
        task_id=rec["task_id"].hex(), name=rec.get("name", ""), state=rec.get("state", "RUNNING"),
        job_id=_job_hex(rec.get("job_id", 0)), type=rec.get("type") or ("ACTOR_TASK" if actor else "NORMAL_TASK"),
        func_or_class_name=rec.get("func") or rec.get("name", ""), node_id=rec["node_id"].hex(),
        worker_id=rec["worker_id"].hex(), worker_pid=rec.get("pid", 0), actor_id=actor.hex() if actor else None,
        error_type=rec.get("error_type"), error_message=rec.get("error_message"),
        start_time_ms=int(rec["start"] * 1000) if rec.get("start") else None,
        end_time_ms=int(rec["end"] * 1000) if rec.get("end") else None,
    )


def list_tasks(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
               timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[TaskState]:
    """The cluster's recent tasks (follows Ray's ``list_tasks``).

    Args:
        filters: ``[(field, "=" or "!=", value), ...]`` on ``TaskState`` fields.
        limit: at most this many, oldest first.

    Raises:
        ValueError: an unknown filter predicate.
        RuntimeError / ConnectionError: not connected and no cluster found.
    """
    records = [_task(r) for r in _call("list_task_events", {}, address)]
    return _filter(records, filters, limit)


def get_task(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> TaskState | None:
    """One task by its id (hex), or None (follows Ray's ``get_task``)."""
    found = [_task(r) for r in _call("list_task_events", {"filters": [["task_id", "=", id]]}, address)]
    return found[0] if found else None


def _actor(a: dict) -> ActorState:
    return ActorState(
        actor_id=a["actor_id"].hex(), class_name=a.get("class_name", ""), state=a.get("state", ""),
        job_id=_job_hex(a.get("job_id", 0)), name=a.get("name") or "", ray_namespace=a.get("namespace"),
        node_id=a["node_id"].hex() if a.get("node_id") else None, pid=a.get("pid"),
        death_cause=a.get("cause"), is_detached=bool(a.get("detached")), num_restarts=a.get("num_restarts") or 0,
    )


def list_actors(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                _explain: bool = False) -> list[ActorState]:
    """The cluster's actors, live and dead (follows Ray's ``list_actors``)."""
    return _filter([_actor(a) for a in _call("list_actors", None, address)], filters, limit)


def get_actor(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> ActorState | None:
    """One actor by its id (hex), or None (follows Ray's ``get_actor``)."""
    found = _filter([_actor(a) for a in _call("list_actors", None, address)], [("actor_id", "=", id)], None)
    return found[0] if found else None


def _node(n: dict) -> NodeState:
    return NodeState(
        node_id=n["node_id"].hex(), node_ip=n["ip"], is_head_node=bool(n.get("is_head")),
        state="ALIVE" if n.get("alive") else "DEAD", node_name=n["ip"], resources_total=dict(n["resources"]),
        labels=dict(n.get("labels") or {}), state_message=n.get("death_reason"),
    )


def list_nodes(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
               timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[NodeState]:
    """The cluster's nodes (follows Ray's ``list_nodes``)."""
    return _filter([_node(n) for n in _call("get_nodes", None, address)], filters, limit)


def get_node(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> NodeState | None:
    """One node by its id (hex), or None (follows Ray's ``get_node``)."""
    found = _filter(list_nodes(address, limit=None), [("node_id", "=", id)], None)
    return found[0] if found else None


def _pg(r: dict) -> PlacementGroupState:
    return PlacementGroupState(
        placement_group_id=r["pg_id"].hex(), name=r["name"], creator_job_id=_job_hex(r.get("job_id") or 0),
        state=r["state"], strategy=r["strategy"], is_detached=bool(r["detached"]),
        bundles=[
            {"bundle_id": i, "node_id": n.hex() if n else None, "unit_resources": dict(b)}
            for i, (b, n) in enumerate(zip(r["bundles"], r["nodes"], strict=True))
        ],
        stats={"end_to_end_creation_latency_ms": r["latency_ms"], "infeasible": r["infeasible"]},
    )


def list_placement_groups(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                          timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                          _explain: bool = False) -> list[PlacementGroupState]:
    """The cluster's placement groups, removed ones included (follows Ray's ``list_placement_groups``)."""
    return _filter([_pg(r) for r in _call("list_placement_groups", None, address)], filters, limit)


def get_placement_group(id: str, address: str | None = None, timeout: int = 30,
                        _explain: bool = False) -> PlacementGroupState | None:
    """One placement group by its id (hex), or None (follows Ray's ``get_placement_group``)."""
    found = _filter(list_placement_groups(address, limit=None), [("placement_group_id", "=", id)], None)
    return found[0] if found else None


def list_jobs(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
              timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
              _explain: bool = False) -> list[JobState]:
    """The cluster's jobs: submitted ones, and drivers that connected by themselves (follows Ray's ``list_jobs``)."""
    jobs = [
        JobState(
            job_id=j.get("job_id"), type=j.get("type", "SUBMISSION"), status=j["status"],
            driver_pid=j.get("driver_pid"), namespace=j.get("driver_namespace"), start_time=j.get("start_time") or 0,
            end_time=j.get("end_time"), submission_id=j.get("submission_id"), entrypoint=j.get("entrypoint"),
            message=j.get("message"), error_type=j.get("error_type"), driver_exit_code=j.get("driver_exit_code"),
        )
        for j in _call("job_list", None, address)
    ]
    return _filter(jobs, filters, limit)


def summarize_tasks(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                    _explain: bool = False) -> dict:
    """Task counts by function and state (follows the shape of Ray's ``summarize_tasks``)."""
    by_name: dict[str, dict] = {}
    tasks = list_tasks(address, limit=None)
    for t in tasks:
        entry = by_name.setdefault(t.func_or_class_name, {"func_or_class_name": t.func_or_class_name,
                                                          "type": t.type, "state_counts": Counter()})
        entry["state_counts"][t.state] += 1
    for entry in by_name.values():
        entry["state_counts"] = dict(entry["state_counts"])
    return {"cluster": {"summary": by_name, "total_tasks": len(tasks), "summary_by": "func_name"}}


def summarize_actors(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                     _explain: bool = False) -> dict:
    """Actor counts by class and state (follows the shape of Ray's ``summarize_actors``)."""
    by_class: dict[str, dict] = {}
    actors = list_actors(address, limit=None)
    for a in actors:
        entry = by_class.setdefault(a.class_name, {"class_name": a.class_name, "state_counts": Counter()})
        entry["state_counts"][a.state] += 1
    for entry in by_class.values():
        entry["state_counts"] = dict(entry["state_counts"])
    return {"cluster": {"summary": by_class, "total_actors": len(actors), "summary_by": "class"}}


def timeline(filename: str | None = None) -> list | None:
    """The tasks that ran, as Chrome trace events (load them at chrome://tracing or ui.perfetto.dev).

    Follows Ray's ``timeline``: one complete ("X") event per task that ended,
    grouped by node (``pid``) and worker (``tid``).

    Args:
        filename: when given, the events are written there as JSON and None is returned.

    Returns:
        The list of events when no filename is given.

    Raises:
        RuntimeError: when ``init()`` has not been called.
    """
    if runtime.current_or_none() is None:
        raise RuntimeError("timeline() needs a connected driver: call skate.init() first")
    events = []
    for rec in _call("list_task_events", {}):
        if not rec.get("start") or not rec.get("end"):
            continue
        events.append({
            "cat": "task::" + rec.get("name", ""),
            "name": rec.get("name", ""),
            "ph": "X",
            "ts": rec["start"] * 1e6,
            "dur": max(rec["end"] - rec["start"], 0) * 1e6,
            "pid": "Node " + rec["node_id"].hex()[:12],
            "tid": f"worker {rec['worker_id'].hex()[:12]} (pid={rec.get('pid')})",
            "args": {"task_id": rec["task_id"].hex(), "state": rec.get("state"), "job_id": _job_hex(rec.get("job_id", 0))},
            "cname": "rail_response" if rec.get("state") == "FINISHED" else "terrible",
        })
    if filename is not None:
        with open(filename, "w") as f:
            json.dump(events, f)
        return None
    return events


# Shared with the other state modules (workers and objects, logs).
gcs_request = _call
apply_filters = _filter
StateRecord = _State
job_hex = _job_hex


def get_job(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> JobState | None:
    """One job by its driver's job id (hex) or its submission id, or None (follows Ray's ``get_job``)."""
    found = [j for j in list_jobs(address, limit=None) if id in (j.job_id, j.submission_id)]
    return found[0] if found else None
