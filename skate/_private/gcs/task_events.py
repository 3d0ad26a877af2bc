"""The control store's table of task events: the latest state of recent tasks.

Workers send batches (``task_events``); each task's events merge into one
record (its first start, its last state, its end and error).  At most
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
    """Recent tasks by id, oldest first."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = CONFIG.task_events_max if limit is None else limit
        self.tasks: collections.OrderedDict[bytes, dict] = collections.OrderedDict()
        self.evicted = 0

    def add(self, events: list[dict]) -> None:
        """Merges a batch of ``TaskEvent`` dicts (decoded for this call: kept as they are)."""
        tasks = self.tasks
        for ev in events:
            tid = ev["task_id"]
            rec = tasks.get(tid)
            if rec is None:
                tasks[tid] = ev
                if "end" not in ev:
                    ev["end"] = None
                    if "start" not in ev:
                        ev["start"] = None
                elif "start" not in ev:
                    ev["start"] = None
            else:
                start = rec.get("start")
                if ev.get("state") == "RUNNING" and rec.get("state") in _ENDED:
                    # The worker's report came after the owner's: the task has ended.
                    ev = {k: v for k, v in ev.items() if k not in ("state", "end")}
                rec.update(ev)
                if start is not None and ev.get("start") is not None:
                    rec["start"] = min(start, ev["start"])  # a retry keeps the first start
        while len(tasks) > self.limit:
            tasks.popitem(last=False)
            self.evicted += 1

    def query(self, filters: list | None = None, limit: int | None = None) -> list[dict]:
        """Records matching every ``[key, "=" or "!=", value]`` filter, newest last."""
        out = []
        for rec in self.tasks.values():
            if filters and not all(_match(rec, f) for f in filters):
                continue
            out.append(rec)
        if limit is not None and len(out) > limit:
            out = out[-limit:]
        return out


def _match(rec: dict, f: list) -> bool:
    key, op, value = f
    have: Any = rec.get(key)
    if isinstance(have, bytes) and isinstance(value, str):
        have = have.hex()
    return (have == value) if op == "=" else (have != value)
