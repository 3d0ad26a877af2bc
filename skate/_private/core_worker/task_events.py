"""Task events: what each worker reports about the tasks it runs.

::

    worker: task starts  -> RUNNING event  (buffered; the buffer is bounded,
                                            dropping the oldest)
    owner:  reply comes  -> FINISHED/FAILED event, with the worker's start and
                            end times (the owner outlives the worker's part:
                            a job's workers end with its driver)
    actor:  a call ends  -> FINISHED/FAILED event with its start and end, after
                            the reply went out (off the caller's path); calls
                            running at a sweep (every second) -> RUNNING
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
               func: str = "", where: tuple | None = None, kind: str = "") -> None:
        """Notes a task's new state (any thread).

        ``error``: ``(type name, message)``; ``where``: ``(node id, worker id,
        pid)`` of the worker that ran it (default: this process); ``kind``: the
        task's type when not told by ``actor_id`` (``ACTOR_CREATION_TASK``).
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
        if kind:
            event["type"] = kind
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


SWEEP_S = 1.0


class ActorCallEvents:
    """Events of the calls an actor runs (its worker's side), cheap on the call's path.

    A call's start only notes ``(name, start)`` in a dict; its end, after the
    reply went out, records one FINISHED/FAILED event with both times.  A
    sweep on the I/O thread every ``SWEEP_S`` records RUNNING for calls still
    running, so long calls show as running in the state API.
    """

    def __init__(self, core: Any) -> None:
        self.core = core
        self.running: dict[bytes, tuple[str, float]] = {}
        self.reported: set[bytes] = set()
        self._sweeping = False

    def start(self, tid: bytes, name: str) -> float:
        """A call begins (its thread); returns its start time."""
        started = time.time()
        self.running[tid] = (name, started)
        if not self._sweeping:
            self._sweeping = True
            self.core.post(self._arm)
        return started

    def end(self, tid: bytes, name: str, started: float, error: BaseException | None) -> None:
        """A call ended, its reply sent (its thread)."""
        self.running.pop(tid, None)
        self.reported.discard(tid)
        err = None
        if error is not None:
            cause = getattr(error, "cause", None) or error
            err = (type(cause).__name__, str(error)[:2000])
        core = self.core
        core.task_events.record(tid, name, "FAILED" if err else "FINISHED", start=started, end=time.time(),
                                actor_id=core.executor.actor_id, error=err, func=name)

    def _arm(self) -> None:
        self.core.loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        core = self.core
        if core.closed:
            return
        for tid, (name, started) in list(self.running.items()):
            if tid not in self.reported:
                self.reported.add(tid)
                core.task_events.record(tid, name, "RUNNING", start=started, actor_id=core.executor.actor_id, func=name)
        self._arm()


def now() -> float:
    """Wall-clock seconds (the event timestamps)."""
    return time.time()
