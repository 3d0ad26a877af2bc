"""Task events: what each process reports about the tasks it runs and owns.

::

    worker: task starts  -> noted as running (a slot, no event yet)
            flush time   -> a RUNNING event for each task still running then
                            (short tasks never make one: their owner's event
                            carries the worker's start and end)
    owner:  reply comes  -> FINISHED/FAILED event, with the worker's start and
                            end times (the owner outlives the worker's part:
                            a job's workers end with its driver)
    actor:  a call ends  -> FINISHED/FAILED event recorded by the actor's worker
                            after the reply went out (off the caller's path)
    both:   every 100 ms, and when a driver leaves -> notify("task_events", batch)
            (a batch: the sender's ids once, then one tuple per event; the
            calls an actor finished go as columns, ``FinishedCalls``: their ids
            and times as two byte strings per method)
    control store: gcs/task_events.py keeps the latest state of the last
            ``Config.task_events_max`` tasks, for the state API and ``timeline()``

On the task's thread recording costs a tuple and a deque append (bounded,
dropping the oldest); the events are built and sent, batched, on the I/O
thread.  A busy actor finishes tens of thousands of calls a second, and on a
machine whose cores its caller and it keep busy, every microsecond the
control store spends per event slows the calls themselves: as columns, a
batch of calls costs the control store a few objects, whatever its length.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from skate._private.config import CONFIG
from skate._private.ids import TASK_ID_LEN

FLUSH_S = 0.1
#: ``where`` of an event whose worker is not known (a call that failed before
#: any worker ran it): the control store keeps the ids it already has.
UNKNOWN_WHERE = (b"", b"", 0)


class TaskEventBuffer:
    """The events one process has not sent yet."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.events: collections.deque = collections.deque(maxlen=CONFIG.task_events_max)
        #: (task id, name, start, end, actor id) of each actor call that returned a value
        self.calls: collections.deque = collections.deque(maxlen=CONFIG.task_events_max)
        self.running: dict[bytes, tuple] = {}  # task id -> (name, start, func, actor id): not reported yet
        self.actor_id: bytes | None = None  # the actor this process hosts, once it does (its calls' events)
        #: An actor's calls in flight (the executor's table): task id -> (name, start) for a
        #: sync call reported RUNNING if it still runs at a flush; other values are not calls to report.
        self.watched: dict = {}
        self._reported: set[bytes] = set()  # of watched, those reported RUNNING
        self.armed = False
        self.on = CONFIG.task_events_max > 0  # recording at all (SKATE_TASK_EVENTS_MAX=0: off)
        self.pid = os.getpid()

    def record(self, task_id: bytes, name: str, state: str, start: float | None = None,
               end: float | None = None, actor_id: bytes | None = None, error: tuple | None = None,
               func: str = "", where: tuple | None = None, kind: str = "") -> None:
        """Notes a task's new state (any thread; the calls on a task's path pass
        everything by position, which Python binds fastest).

        ``start``/``end``: wall-clock seconds; ``error``: ``(type name,
        message)``; ``where``: ``(node id, worker id, pid)`` of the worker
        that ran it (default: this process); ``kind``: the task's type when
        ``actor_id`` does not tell it (``ACTOR_CREATION_TASK``).
        """
        if not self.on:
            return
        self.events.append((task_id, name, state, start, end, actor_id, error, func, where, kind))
        if not self.armed:
            self.arm_soon()

    def started(self, task_id: bytes, name: str, start: float, func: str = "", actor_id: bytes | None = None) -> None:
        """Notes that this worker started running ``task_id`` (its thread).

        A RUNNING event goes out only if the task still runs at the next
        flush; ``ended`` withdraws it.
        """
        if not self.on:
            return
        self.running[task_id] = (name, start, func, actor_id)
        if not self.armed:
            self.arm_soon()

    def ended(self, task_id: bytes) -> None:
        """Notes that ``task_id`` stopped running here (its owner reports how)."""
        self.running.pop(task_id, None)

    def call_started(self, task_id: bytes, name: str) -> float:
        """An actor call begins (its thread): noted as running, as ``started``
        notes a task; returns its start time."""
        start = time.time()
        self.running[task_id] = (name, start, name, self.actor_id)
        if not self.armed:
            self.arm_soon()
        return start

    def call_ended(self, task_id: bytes, name: str, start: float, error: BaseException | None, kind: str = "") -> None:
        """An actor call ended, its reply sent (its thread): one row of the next
        batch's ``FinishedCalls`` columns when it returned a value, else a
        FAILED row; ``kind``: set for a creation (which has no ``call_started``)."""
        self.running.pop(task_id, None)
        if error is None and not kind:
            self.calls.append((task_id, name, start, time.time(), self.actor_id))
            if not self.armed:  # (a call reported running at a flush left none armed)
                self.arm_soon()
        else:
            self.record(*_call_row(task_id, name, start, error, kind, self.actor_id))

    def arm_soon(self) -> None:
        """Has the I/O thread flush in ``FLUSH_S`` (any thread)."""
        self.armed = True
        self.core.post(self._arm)

    def _arm(self) -> None:
        self.core.loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Sends what is buffered (I/O thread)."""
        self.armed = False
        if (self.events or self.calls or self.running or self.watched) and not self.core.closed:
            asyncio.ensure_future(self.send())
        if self.running and not self.armed:  # tasks still run: look again later
            self.armed = True
            self._arm()

    def take(self) -> dict | None:
        """The buffered events as one ``TaskEventBatch`` (emptying the buffer),
        plus a RUNNING row for each task that started here and has not been
        reported; None when there is nothing to send.

        The buffer's tuples are the rows as they are: nothing is built per
        event here (a busy actor records tens of thousands a second).
        """
        pop = self.events.popleft  # (one at a time: a task's thread may append meanwhile)
        rows = [pop() for _ in range(len(self.events))]
        calls = self._take_calls(rows)
        if self.running:
            for task_id, (name, start, func, actor_id) in list(self.running.items()):
                if self.running.pop(task_id, None) is None:
                    continue  # it ended meanwhile
                rows.append((task_id, name, "RUNNING", start, None, actor_id, None, func, None, ""))
        if self.watched or self._reported:
            watched, reported = self.watched, self._reported
            for task_id, call in list(watched.items()):
                if type(call) is tuple and task_id not in reported:
                    reported.add(task_id)
                    rows.append((task_id, call[0], "RUNNING", call[1], None, self.actor_id, None, call[0], None, ""))
            self._reported = {t for t in reported if t in watched}
        if not rows and not calls:
            return None
        core = self.core
        return {"job_id": core.job_id, "node_id": core.node_id, "worker_id": core.worker_id, "pid": self.pid,
                "rows": rows, "calls": calls}

    def _take_calls(self, rows: list) -> list:
        """The finished actor calls buffered, as ``FinishedCalls`` columns, one per
        actor and method (a call whose id is not a task id goes to ``rows``)."""
        pop = self.calls.popleft  # (one at a time: a call's thread may append meanwhile)
        taken = [pop() for _ in range(len(self.calls))]
        if not taken:
            return []
        task_ids, names, starts, ends, actor_ids = zip(*taken, strict=True)
        if len(set(names)) == 1 and len(set(actor_ids)) == 1 and set(map(len, task_ids)) == {TASK_ID_LEN}:
            # One actor's one method, as usual: the columns in a few C-level passes.
            times = array.array("d", itertools.chain.from_iterable(zip(starts, ends, strict=True)))
            return [(actor_ids[0], names[0], b"".join(task_ids), _little_endian(times))]
        groups: dict[tuple, tuple[list, array.array]] = {}
        for task_id, name, start, end, actor_id in taken:
            if len(task_id) != TASK_ID_LEN:
                rows.append((task_id, name, "FINISHED", start, end, actor_id, None, name, None, ""))
                continue
            group = groups.get((actor_id, name))
            if group is None:
                group = groups[(actor_id, name)] = ([], array.array("d"))
            group[0].append(task_id)
            group[1].append(start)
            group[1].append(end)
        return [(actor_id, name, b"".join(ids), _little_endian(times))
                for (actor_id, name), (ids, times) in groups.items()]

    async def send(self) -> None:
        """Sends what is buffered now (I/O thread; also at shutdown)."""
        batch = self.take()
        if batch is None:
            return
        try:
            (await self.core.gcs()).notify("task_events", batch)
        except (ConnectionError, OSError):
            pass  # the control store is gone: these events are lost


class ActorCallEvents:
    """Events of the calls an actor runs (its worker's side), cheap on the call's path.

    ``start(task id, name) -> start time`` notes a call as running (a RUNNING
    event goes out if it still runs at the next flush); ``end(task id, name,
    start, error, kind="")``, after the reply went out, records one
    FINISHED/FAILED event with both times.  They are the buffer's own
    ``call_started``/``call_ended`` (one call each on the call's path), or,
    with recording off, no-ops (no check per call).
    """

    def __init__(self, core: Any) -> None:
        self.buf: TaskEventBuffer | None = getattr(core, "task_events", None)  # (None: an executor only listing handlers)
        #: The buffer, for a sync call's own path (see ``ActorExecution._run_call_here``); None when recording is off.
        self.sync_buf = self.buf if self.buf is not None and self.buf.on else None
        if self.buf is None or not self.buf.on:  # recording is off: nothing to check per call
            self.start: Callable[[bytes, str], float] = _start_unrecorded
            self.end: Callable[..., None] = _end_unrecorded
        else:
            self.start = self.buf.call_started
            self.end = self.buf.call_ended

    def set_actor(self, actor_id: bytes, in_flight: dict) -> None:
        """The actor this worker hosts (created now): its calls' events carry its
        id, and its sync calls in flight (``in_flight``: the executor's table) are
        watched by flushes."""
        if self.buf is not None:
            self.buf.actor_id = actor_id
            if self.buf.on:
                self.buf.watched = in_flight


def _call_row(tid: bytes, name: str, started: float, error: BaseException | None, kind: str, actor_id: bytes | None) -> tuple:
    """The row of an actor call that failed, or of a creation."""
    err = None
    if error is not None:
        from skate import exceptions as exc
        from skate._private import task_errors

        cause = getattr(error, "cause", None) or error
        text = str(error) if isinstance(error, exc.RayError) else task_errors.user_traceback(error)
        err = (type(cause).__name__, text[-8000:])
    # (task id, name, state, start, end, actor id, error, func, where, kind): see TaskEventBuffer.record
    return (tid, name, "FAILED" if err else "FINISHED", started, time.time(), actor_id, err, name, None, kind)


def _start_unrecorded(tid: bytes, name: str) -> float:
    return time.time()


def _end_unrecorded(tid: bytes, name: str, started: float, error: BaseException | None, kind: str = "") -> None:
    pass


def _little_endian(values: array.array) -> bytes:
    """The bytes of an array of doubles, least significant first (``FinishedCalls`` times)."""
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def now() -> float:
    """Wall-clock seconds (the event timestamps)."""
    return time.time()
