"""What the dashboard shows: a snapshot of the cluster, taken at most once a second.

::

    control store --(state API: tasks, actors, jobs; nodes; blocked calls)--+
    each node daemon --(node_stats: store, workers, queued leases, host)----+--> Snapshot
                                                                            |   (JSON views,
    previous snapshots --(did any task end or start?)--> hang warning ------+    metrics)

Snapshots are taken only while someone looks (a page, an API call, a
Prometheus scrape), in a thread, so an idle dashboard asks the cluster
nothing.  Everything here is blocking code that runs off the event loop.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from skate._private import discovery, hostaddr, wire
from skate.util import state

#: Tasks the views and the timeline show at most (the newest).
MAX_TASKS = 1000


def _hang_seconds() -> float:
    return float(os.environ.get("SKATE_DASHBOARD_HANG_S", "30"))


@dataclass
class Snapshot:
    """One look at the cluster (every list holds plain JSON-ready dicts)."""

    taken: float
    nodes: list[dict] = field(default_factory=list)
    actors: list[dict] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)
    task_counts: dict = field(default_factory=dict)  # (name, state) -> count, over every recorded task
    jobs: list[dict] = field(default_factory=list)
    waits: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Collector:
    """Takes snapshots of the cluster at ``gcs_address`` and tracks progress between them."""

    def __init__(self, gcs_address: str, token: bytes) -> None:
        self.gcs_address = gcs_address
        self.token = token
        self.last: Snapshot | None = None
        self._lock = threading.Lock()
        self._progress_sig: tuple | None = None
        self._progress_at = time.time()

    def snapshot(self, max_age: float = 1.0) -> Snapshot:
        """The latest snapshot, taken now when the last one is older than ``max_age`` seconds."""
        with self._lock:
            if self.last is not None and time.time() - self.last.taken < max_age:
                return self.last
            snap = self._take()
            self._track_progress(snap)
            self.last = snap
            return snap

    # --- gathering ------------------------------------------------------------------------
    def _gcs(self, method: str, body: Any = None) -> Any:
        return discovery.request(self.gcs_address, self.token, method, body, expect=wire.GCS_IDENTITY)

    def _take(self) -> Snapshot:
        snap = Snapshot(taken=time.time())
        addr = self.gcs_address
        for what, fn in (("nodes", self._nodes), ("actors", lambda: _actors(addr)),
                         ("tasks", lambda: _tasks(addr, snap)), ("jobs", lambda: _jobs(addr)),
                         ("waits", self._waits)):
            try:
                setattr(snap, what, fn())
            except Exception as e:  # noqa: BLE001  # one view failing must not blank the others
                snap.errors.append(f"{what}: {type(e).__name__}: {e}")
        return snap

    def _nodes(self) -> list[dict]:
        out = []
        for n in self._gcs("get_nodes"):
            row = {
                "node_id": n["node_id"].hex(), "ip": n["ip"], "is_head": bool(n.get("is_head")),
                "state": "ALIVE" if n.get("alive") else "DEAD", "resources_total": dict(n.get("resources") or {}),
                "resources_available": dict(n.get("available") or {}), "labels": dict(n.get("labels") or {}),
                "death_reason": n.get("death_reason"), "pid": n.get("pid"), "stats": None,
            }
            if n.get("alive"):
                target: Any = hostaddr.local_target(n["uds"], n["ip"], n["port"])
                try:
                    row["stats"] = _node_stats(discovery.request(target, self.token, "node_stats", timeout=5.0,
                                                                 expect=n["node_id"]))
                except ConnectionError as e:
                    row["stats_error"] = str(e)
            out.append(row)
        return out

    def _waits(self) -> list[dict]:
        try:
            reports = self._gcs("list_waits")
        except ConnectionError:
            raise
        except Exception:  # noqa: BLE001  # a control store without the table: nothing reported
            return []
        out = []
        for r in reports:
            out.append({
                "pid": r.get("pid"), "node_id": _hex(r.get("node_id")), "worker_id": _hex(r.get("worker_id")),
                "job_id": r.get("job_id"), "driver": bool(r.get("driver")), "what": r.get("what") or "",
                "blocked": list(r.get("blocked") or ()), "actors": list(r.get("actors") or ()),
            })
        return out

    # --- progress and hangs ---------------------------------------------------------------------
    def _track_progress(self, snap: Snapshot) -> None:
        counts = snap.task_counts
        ended = sum(c for (_, st), c in counts.items() if st in ("FINISHED", "FAILED"))
        total = sum(counts.values())
        last_end = max((t.get("end_time_ms") or 0 for t in snap.tasks), default=0)
        sig = (ended, total, last_end)
        if sig != self._progress_sig:
            self._progress_sig = sig
            self._progress_at = snap.taken

    def hang(self, snap: Snapshot) -> dict | None:
        """The hang warning for ``snap``: work is pending and no task started or ended for the last N seconds.

        ``N`` is ``SKATE_DASHBOARD_HANG_S`` (default 30).  None when there is no such hang.
        """
        pending = pending_work(snap)
        idle = snap.taken - self._progress_at
        limit = _hang_seconds()
        if not pending or idle < limit:
            return None
        return {"seconds": round(idle, 1), "threshold_s": limit, "pending": pending}


def pending_work(snap: Snapshot) -> list[str]:
    """What is still to be done in ``snap``, in words (empty: nothing)."""
    out = []
    running = sum(1 for t in snap.tasks if t["state"] == "RUNNING")
    if running:
        out.append(f"{running} running task(s)")
    queued = sum(len(n["stats"]["demands"]) for n in snap.nodes if n.get("stats"))
    if queued:
        out.append(f"{queued} queued resource request(s)")
    blocked = sum(len(w["blocked"]) for w in snap.waits)
    if blocked:
        out.append(f"{blocked} blocked get/wait call(s)")
    calls = sum(a.get("queued", 0) + a.get("inflight", 0) for w in snap.waits for a in w["actors"])
    if calls:
        out.append(f"{calls} actor call(s) without a reply")
    return out


def _hex(v: Any) -> str | None:
    return v.hex() if isinstance(v, (bytes, bytearray)) else v


def _node_stats(st: dict) -> dict:
    store = st.get("store") or {}
    host = st.get("host") or {}
    return {
        "workers": st.get("workers", 0), "idle_workers": st.get("idle", 0), "leases": st.get("leases", 0),
        "store_used": store.get("used", 0), "store_capacity": store.get("capacity", 0),
        "store_objects": store.get("objects", 0), "store_spilled": store.get("spilled", 0),
        "spilled_bytes_total": store.get("spilled_bytes_total", 0),
        "demands": [{"resources": dict(shape), "infeasible": bool(inf)} for shape, inf in st.get("demands", ())],
        "cpu_percent": host.get("cpu_percent"), "cpu_count": host.get("cpu_count"),
        "mem_used": host.get("mem_used"), "mem_total": host.get("mem_total"),
        "worker_pids": list(st.get("pids") or ()),
    }


def _actors(addr: str) -> list[dict]:
    return [a.asdict() for a in state.list_actors(address=addr, limit=None, detail=True)]


def _tasks(addr: str, snap: Snapshot) -> list[dict]:
    tasks = state.list_tasks(address=addr, limit=None, detail=True)
    counts: dict = {}
    for t in tasks:
        key = (t.func_or_class_name or t.name, t.state)
        counts[key] = counts.get(key, 0) + 1
    snap.task_counts = counts
    now_ms = snap.taken * 1000
    out = []
    for t in tasks[-MAX_TASKS:]:
        row = t.asdict()
        start, end = row.get("start_time_ms"), row.get("end_time_ms")
        row["duration_ms"] = (end or now_ms) - start if start else None
        out.append(row)
    return out


def _jobs(addr: str) -> list[dict]:
    return [j.asdict() for j in state.list_jobs(address=addr, limit=None, detail=True)]


def timeline(snap: Snapshot) -> list[dict]:
    """Tasks that started, as bars: one row per worker (running ones end now)."""
    out = []
    now_ms = snap.taken * 1000
    for t in snap.tasks:
        if not t.get("start_time_ms"):
            continue
        out.append({
            "task_id": t["task_id"], "name": t["name"], "state": t["state"], "node_id": t["node_id"],
            "row": f"{t['node_id'][:8]} pid {t['worker_pid']}", "start_ms": t["start_time_ms"],
            "end_ms": t.get("end_time_ms") or now_ms,
        })
    return out


def waiting(snap: Snapshot, hang: dict | None) -> dict:
    """The "what is waiting on what" view: blocked calls, queued resource requests,
    actors with calls not answered yet, long-running tasks, and the hang warning."""
    by_id = {t["task_id"]: t for t in snap.tasks}
    blocked = []
    actor_calls = []
    for w in snap.waits:
        who = "driver" if w["driver"] else (w["what"] or "worker")
        for b in w["blocked"]:
            on = []
            for tid, name in b.get("tasks") or ():
                t = by_id.get(tid)  # no record yet: not started (waiting for a worker or for resources)
                on.append({"task_id": tid, "name": name, "state": t["state"] if t else "PENDING"})
            blocked.append({"who": f"task {b['task']}" if b.get("task") else who, "pid": w["pid"],
                            "node_id": w["node_id"], "call": b.get("call"),
                            "seconds": round(max(snap.taken - (b.get("since") or snap.taken), 0), 1),
                            "objects": b.get("objects"), "n": b.get("n"), "on": on})
        for a in w["actors"]:
            actor_calls.append(dict(a, caller=who, caller_pid=w["pid"]))
    demands = []
    for n in snap.nodes:
        for d in (n.get("stats") or {}).get("demands", ()):
            demands.append({"node_id": n["node_id"], "ip": n["ip"], **d})
    running = sorted((t for t in snap.tasks if t["state"] == "RUNNING"),
                     key=lambda t: -(t.get("duration_ms") or 0))[:50]
    return {"hang": hang, "blocked": blocked, "demands": demands, "actor_calls": actor_calls,
            "running": running, "pending": pending_work(snap)}
