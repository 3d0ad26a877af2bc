"""Task events: what each worker reports about the tasks it runs.

::

    worker: task starts  -> RUNNING event  (buffered; the buffer is bounded,
                                            dropping the oldest)
    owner:  reply comes  -> FINISHED/FAILED event, with the worker's start and
                            end times (the owner outlives the worker's part:
                            a job's workers end with its driver)
    both:   every 100 ms, and when a driver leaves -> notify("task_events", [...])
    control store: gcs/task_events.py keeps the latest state of the last
            ``Config.task_events_max`` tasks, for the state API and ``timeline()``

Recording costs a dict and a deque append per event on the task's thread;
sending is batched on the I/O thread.
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
        self.dropped = 0
        self._armed = False
        self.pid = os.getpid()

    def record(self, task_id: bytes, name: str, state: str, *, start: float | None = None,
               end: float | None = None, actor_id: bytes | None = None, error: tuple | None = None,
               func: str = "", where: tuple | None = None) -> None:
        """Notes a task's new state (any thread).

        ``error``: ``(type name, message)``; ``where``: ``(node id, worker id,
        pid)`` of the worker that ran it (default: this process).
        """
        if not CONFIG.task_events_max:
            return
        core = self.core
        node_id, worker_id, pid = where or (core.node_id, core.worker_id, self.pid)
        event: dict = {
            "task_id": task_id, "name": name, "state": state, "job_id": core.job_id,
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
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)
        if not self._armed:
            self._armed = True
            core.post(self._arm)

    def _arm(self) -> None:
        self.core.loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Sends what is buffered (I/O thread)."""
        self._armed = False
        if self.events and not self.core.closed:
            asyncio.ensure_future(self.send())

    async def send(self) -> None:
        """Sends what is buffered now (I/O thread; also at shutdown)."""
        batch = list(self.events)
        self.events.clear()
        if not batch:
            return
        try:
            (await self.core.gcs()).notify("task_events", batch)
        except (ConnectionError, OSError):
            pass  # the control store is gone: these events are lost


def now() -> float:
    """Wall-clock seconds (the event timestamps)."""
    return time.time()
