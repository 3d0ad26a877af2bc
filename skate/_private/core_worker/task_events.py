"""Task events: what each process reports about the tasks it runs and owns.

::

    worker: task starts  -> noted as running (a slot, no event yet)
            flush time   -> a RUNNING event for each task still running then
                            (short tasks never make one: their owner's event
                            carries the worker's start and end)
    owner:  reply comes  -> FINISHED/FAILED event, with the worker's start and
                            end times (the owner outlives the worker's part:
                            a job's workers end with its driver)
    both:   every 100 ms, and when a driver leaves -> notify("task_events", [...])
    control store: gcs/task_events.py keeps the latest state of the last
            ``Config.task_events_max`` tasks, for the state API and ``timeline()``

On the task's thread recording costs a tuple and a deque append (bounded,
dropping the oldest); the events are built and sent, batched, on the I/O
thread.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

from skate._private.config import CONFIG

FLUSH_S = 0.1


class TaskEventBuffer:
    """The events one process has not sent yet."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.events: collections.deque = collections.deque(maxlen=CONFIG.task_events_max)
        self.running: dict[bytes, tuple] = {}  # task id -> (name, start, func, actor id): not reported yet
        self.dropped = 0
        self._armed = False
        self.pid = os.getpid()

    def record(self, task_id: bytes, name: str, state: str, *, start: float | None = None,
               end: float | None = None, actor_id: bytes | None = None, error: tuple | None = None,
               func: str = "", where: tuple | None = None) -> None:
        """Notes a task's new state (any thread).

        ``start``/``end``: wall-clock seconds; ``error``: ``(type name,
        message)``; ``where``: ``(node id, worker id, pid)`` of the worker
        that ran it (default: this process).
        """
        if not CONFIG.task_events_max:
            return
        events = self.events
        if len(events) == events.maxlen:
            self.dropped += 1
        events.append((task_id, name, state, start, end, actor_id, error, func, where))
        if not self._armed:
            self._armed = True
            self.core.post(self._arm)

    def started(self, task_id: bytes, name: str, start: float, func: str = "", actor_id: bytes | None = None) -> None:
        """Notes that this worker started running ``task_id`` (its thread).

        A RUNNING event goes out only if the task still runs at the next
        flush; ``ended`` withdraws it.
        """
        if not CONFIG.task_events_max:
            return
        self.running[task_id] = (name, start, func, actor_id)
        if not self._armed:
            self._armed = True
            self.core.post(self._arm)

    def ended(self, task_id: bytes) -> None:
        """Notes that ``task_id`` stopped running here (its owner reports how)."""
        self.running.pop(task_id, None)

    def _arm(self) -> None:
        self.core.loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Sends what is buffered (I/O thread)."""
        self._armed = False
        if (self.events or self.running) and not self.core.closed:
            asyncio.ensure_future(self.send())
        if self.running and not self._armed:  # tasks still run: look again later
            self._armed = True
            self._arm()

    def take(self) -> list[dict]:
        """The buffered events as ``TaskEvent`` dicts (emptying the buffer), plus a
        RUNNING event for each task that started here and has not been reported."""
        core = self.core
        here = (core.node_id, core.worker_id, self.pid)
        job_id = core.job_id
        batch = []
        events = self.events
        while events:
            task_id, name, state, start, end, actor_id, error, func, where = events.popleft()
            node_id, worker_id, pid = where or here
            event: dict = {
                "task_id": task_id, "name": name, "state": state, "job_id": job_id,
                "node_id": node_id, "worker_id": worker_id, "pid": pid,
            }
            if start is not None:
                event["start"] = start
            if end is not None:
                event["end"] = end
            if actor_id:
                event["actor_id"] = actor_id
            if func:
                event["func"] = func
            if error is not None:
                event["error_type"], event["error_message"] = error
            batch.append(event)
        if self.running:
            for task_id, (name, start, func, actor_id) in list(self.running.items()):
                if self.running.pop(task_id, None) is None:
                    continue  # it ended meanwhile
                event = {
                    "task_id": task_id, "name": name, "state": "RUNNING", "job_id": job_id,
                    "node_id": here[0], "worker_id": here[1], "pid": self.pid, "start": start,
                }
                if func:
                    event["func"] = func
                if actor_id:
                    event["actor_id"] = actor_id
                batch.append(event)
        return batch

    async def send(self) -> None:
        """Sends what is buffered now (I/O thread; also at shutdown)."""
        batch = self.take()
        if not batch:
            return
        try:
            (await self.core.gcs()).notify("task_events", batch)
        except (ConnectionError, OSError):
            pass  # the control store is gone: these events are lost


def now() -> float:
    """Wall-clock seconds (the event timestamps)."""
    return time.time()
