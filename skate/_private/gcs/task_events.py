"""The control store's table of task events: the latest state of recent tasks.

Workers send batches (``task_events``: rows and ``FinishedCalls`` columns, see
``TaskEventBatch``); each
task's events merge into one record (its first start, its last state, its
end and error) when someone asks.  About the last
``Config.task_events_max`` tasks are kept: the oldest go first, like Ray's
bounded task-event storage.  ``list_task_events`` answers the state API and
``timeline()``.
"""

from __future__ import annotations

import array
import collections
import itertools
import math
import operator
import sys
from typing import Any

from skate._private.config import CONFIG
from skate._private.ids import TASK_ID_LEN

_ENDED = ("FINISHED", "FAILED")


class TaskEventTable:
    """Recent task events, as the batches they came in, oldest first.

    Adding a batch costs no work per event (a busy actor's worker reports
    tens of thousands of calls a second): the batch is kept as it was
    decoded (its actor calls as columns, made rows only by queries), and
    the oldest batches go once the rest hold ``2 * limit`` events (most
    tasks have one or two).  The last evicted batches that hold ``limit``
    ends (at most ``8 * limit`` rows) are kept too, unread until a query:
    an evicted task's end there keeps a report of it running that came
    later from bringing it back to RUNNING.  Queries
    merge the rows into one record per task, in the order the tasks were
    first seen, and return at most the newest ``limit`` tasks.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = CONFIG.task_events_max if limit is None else limit
        self.batches: collections.deque[tuple[tuple, list, list, int]] = collections.deque()  # (sender, rows, calls, events)
        self.rows = 0
        self.evicted = 0  # events dropped to stay within the limit
        self.gone: collections.deque[tuple[tuple, list, int]] = collections.deque()  # evicted (sender, rows, ends)
        self.gone_rows = 0
        self.gone_ends = 0  # rows of gone that are ends (FINISHED or FAILED)

    def add(self, batch: dict) -> None:
        """Keeps one ``TaskEventBatch`` (decoded for this call: kept as it is).

        Raises ``ValueError`` (keeping nothing of it) when its ``FinishedCalls``
        columns do not match.
        """
        rows, calls = batch["rows"], batch["calls"]
        n = len(rows)
        if not _all_finite(rows):
            row = next(r for r in rows if not _finite(r[3]) or not _finite(r[4]))
            raise ValueError(f"the event of {row[1]!r} has a time that is not a finite number: {row[3]}, {row[4]}")
        for _, name, ids, times in calls:
            count = len(ids) // TASK_ID_LEN
            if len(ids) != count * TASK_ID_LEN or len(times) != 16 * count:
                raise ValueError(f"FinishedCalls of {name!r}: {len(ids)} bytes of task ids and {len(times)} of times "
                                 f"are not {TASK_ID_LEN} and 16 bytes per call")
            if not all(map(math.isfinite, _times(times))):
                raise ValueError(f"FinishedCalls of {name!r}: a time that is not a finite number")
            n += count
        if not n or self.limit <= 0:
            return
        self.batches.append(((batch["job_id"], batch["node_id"], batch["worker_id"], batch["pid"]), rows, calls, n))
        self.rows += n
        batches, gone = self.batches, self.gone
        while self.rows - batches[0][3] >= 2 * self.limit:
            # (an evicted call's end needs no remembering: only its own worker,
            # which sent it, reports it running, and did so before)
            sender, old, _, count = batches.popleft()
            self.rows -= count
            self.evicted += count
            if old:
                ends = sum(map(_IS_END, map(_STATE, old)))  # (in C: no work per row in Python)
                gone.append((sender, old, ends))
                self.gone_rows += len(old)
                self.gone_ends += ends
                # The last ``limit`` ends, as long as that takes fewer than 8 * limit rows.
                while (self.gone_ends - gone[0][2] >= self.limit
                       or self.gone_rows - len(gone[0][1]) >= 8 * self.limit):
                    _, rows_gone, ends_gone = gone.popleft()
                    self.gone_rows -= len(rows_gone)
                    self.gone_ends -= ends_gone

    def records(self) -> collections.OrderedDict:
        """Each task's record (a ``TaskEvent`` dict), by task id, in the order first seen."""
        tasks: collections.OrderedDict[bytes, dict] = collections.OrderedDict()
        ended = {row[0]: (sender, row) for sender, rows, _ in self.gone for row in rows if row[2] in _ENDED}
        for sender, rows, calls, _ in self.batches:
            for row in itertools.chain(rows, _call_rows(calls)) if calls else rows:
                rec = tasks.get(row[0])
                if rec is not None:
                    _merge(rec, _event(sender, row))
                elif row[0] in ended:  # its end was evicted: it goes first, as it came
                    rec = tasks[row[0]] = _record(*ended[row[0]])
                    _merge(rec, _event(sender, row))
                else:
                    tasks[row[0]] = _record(sender, row)
        while len(tasks) > self.limit:
            tasks.popitem(last=False)
        return tasks

    def query(self, filters: list | None = None, limit: int | None = None) -> list[dict]:
        """Records (``TaskEvent`` dicts) matching every ``[key, "=" or "!=",
        value]`` filter, newest last."""
        out = []
        for rec in self.records().values():
            if filters and not all(_match(rec, f) for f in filters):
                continue
            out.append(rec)
        if limit is not None and len(out) > limit:
            out = out[-limit:]
        return out


def _all_finite(rows: list) -> bool:
    """Whether every row's start and end is absent or a finite number.

    One pass in C: a sum of finite times is finite (times are seconds, far
    from overflowing); only a sum that is not is looked at row by row."""
    if not rows:
        return True
    total = sum(filter(None, map(_START, rows))) + sum(filter(None, map(_END, rows)))
    if math.isfinite(total):
        return True
    return all(_finite(r[3]) and _finite(r[4]) for r in rows)


_START, _END, _STATE = operator.itemgetter(3), operator.itemgetter(4), operator.itemgetter(2)
_IS_END = frozenset(_ENDED).__contains__


def _finite(t: Any) -> bool:
    """A time that is absent or a finite number (NaN or infinity would break every query)."""
    return t is None or math.isfinite(t)


def _times(times: bytes) -> array.array:
    """The start and end times of ``FinishedCalls`` (little-endian doubles) as numbers."""
    t = array.array("d", times)
    if sys.byteorder != "little":
        t.byteswap()
    return t


def _call_rows(calls: list) -> Any:
    """The rows of ``FinishedCalls`` columns (checked by ``add``), each call FINISHED."""
    for actor_id, name, ids, times in calls:
        n = len(ids) // TASK_ID_LEN
        t = _times(times)
        for i in range(n):
            yield (ids[i * TASK_ID_LEN : (i + 1) * TASK_ID_LEN], name, "FINISHED", t[2 * i], t[2 * i + 1], actor_id,
                   None, name, None, "")


def _merge(rec: dict, ev: dict) -> None:
    """A task's later event into its record."""
    start = rec.get("start")
    if ev["state"] == "RUNNING" and rec.get("state") in _ENDED:
        # The worker's report came after the owner's: the task has ended.
        ev = {k: v for k, v in ev.items() if k not in ("state", "end")}
    rec.update(ev)
    if start is not None and ev.get("start") is not None:
        rec["start"] = min(start, ev["start"])  # a retry keeps the first start


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
