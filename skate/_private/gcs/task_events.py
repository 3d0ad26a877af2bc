"""The control store's table of task events: the latest state of recent tasks.

Workers send batches (``task_events``: rows, see ``TaskEventBatch``); each
task's events merge into one record (its first start, its last state, its
end and error).  At most
``Config.task_events_max`` tasks are kept: the oldest go first, like Ray's
bounded task-event storage.  ``list_task_events`` answers the state API and
``timeline()``.
"""

from __future__ import annotations

import collections
from typing import Any

from skate._private.config import CONFIG

_ENDED = ("FINISHED", "FAILED")


class TaskEventTable:
    """Recent tasks by id, oldest first.

    A task seen once (most of them: an actor call's one FINISHED row, a
    task's owner report) is kept as the row it came in, with its sender's
    ids; a second event for it turns it into a merged dict.  Queries build
    the dicts: the table costs little per event to fill.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = CONFIG.task_events_max if limit is None else limit
        self.tasks: collections.OrderedDict[bytes, tuple | dict] = collections.OrderedDict()
        self.evicted = 0

    def add(self, batch: dict) -> None:
        """Merges one ``TaskEventBatch`` (decoded for this call: kept as it is)."""
        sender = (batch["job_id"], batch["node_id"], batch["worker_id"], batch["pid"])
        tasks = self.tasks
        for row in batch["rows"]:
            tid = row[0]
            rec = tasks.get(tid)
            if rec is None:
                tasks[tid] = (sender, row)
                continue
            if type(rec) is tuple:
                rec = tasks[tid] = _record(*rec)
            ev = _event(sender, row)
            start = rec.get("start")
            if ev["state"] == "RUNNING" and rec.get("state") in _ENDED:
                # The worker's report came after the owner's: the task has ended.
                ev = {k: v for k, v in ev.items() if k not in ("state", "end")}
            rec.update(ev)
            if start is not None and ev.get("start") is not None:
                rec["start"] = min(start, ev["start"])  # a retry keeps the first start
        while len(tasks) > self.limit:
            tasks.popitem(last=False)
            self.evicted += 1

    def query(self, filters: list | None = None, limit: int | None = None) -> list[dict]:
        """Records (``TaskEvent`` dicts) matching every ``[key, "=" or "!=",
        value]`` filter, newest last."""
        out = []
        for rec in self.tasks.values():
            if type(rec) is tuple:
                rec = _record(*rec)
            if filters and not all(_match(rec, f) for f in filters):
                continue
            out.append(rec)
        if limit is not None and len(out) > limit:
            out = out[-limit:]
        return out


def _event(sender: tuple, row: tuple) -> dict:
    """One row as a ``TaskEvent`` dict: only the fields it carries."""
    task_id, name, state, start, end, actor_id, error, func, where, kind = row
    job_id, node_id, worker_id, pid = sender
    if where:
        node_id, worker_id, pid = where
    ev: dict = {"task_id": task_id, "name": name, "state": state, "job_id": job_id}
    if node_id:  # (empty: the sender does not know which worker; a record keeps what it has)
        ev["node_id"], ev["worker_id"], ev["pid"] = node_id, worker_id, pid
    if start is not None:
        ev["start"] = start
    if end is not None:
        ev["end"] = end
    if actor_id:
        ev["actor_id"] = actor_id
    if func:
        ev["func"] = func
    if error is not None:
        ev["error_type"], ev["error_message"] = error
    if kind:
        ev["type"] = kind
    return ev


def _record(sender: tuple, row: tuple) -> dict:
    """A task's record from its first row (``start``/``end``: None when not known)."""
    rec = _event(sender, row)
    rec.setdefault("start", None)
    rec.setdefault("end", None)
    rec.setdefault("node_id", b"")
    rec.setdefault("worker_id", b"")
    rec.setdefault("pid", 0)
    return rec


def _match(rec: dict, f: list) -> bool:
    key, op, value = f
    have: Any = rec.get(key)
    if isinstance(have, bytes) and isinstance(value, str):
        have = have.hex()
    return (have == value) if op == "=" else (have != value)
