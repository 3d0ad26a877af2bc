"""What this process waits on, for the dashboard's "what is waiting on what" view.

::

    user thread: get/wait blocks  -> begin(): a dict insert (no I/O, no wake-up)
                 get/wait returns -> end():   a dict pop
    I/O thread, once a second while anything is noted (armed by the first begin()):
        calls blocked for over a second, with the objects still missing and the
        tasks this process submitted that make them, and the actors whose calls
        from here have had no reply for over a second
        -> notify("report_waits", ...) to the control store when that changed,
           and every 5 s while it lasts (the control store forgets a report
           after ``gcs/waits.STALE_S`` without one, e.g. when the process died)

Nothing is sent by a process that never blocks, nor once its waits are over
(one empty report says so).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from skate._private.core_worker.memory_store import PENDING

#: A call blocked for less than this is not reported.
REPORT_AFTER_S = 1.0
TICK_S = 1.0
#: A report is repeated this often while it lasts.
RESEND_S = 5.0
#: Objects and tasks named per blocked call, at most.
MAX_NAMED = 5


class WaitReporter:
    """This process's blocked get/wait calls and unanswered actor calls."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.blocked: dict[int, tuple] = {}
        self._keys = itertools.count()
        self._armed = False
        self._sent: dict | None = None
        self._sent_at = 0.0
        self._actors_seen: set[bytes] = set()

    def begin(self, call: str, refs: list) -> int:
        """Notes that this thread blocks in ``call`` ("get" or "wait") on ``refs``; returns a key for ``end``."""
        key = next(self._keys)
        self.blocked[key] = (time.time(), call, refs, getattr(self.core.ctx, "name", None))
        if not self._armed:
            self._armed = True
            self.core.post(self._schedule)
        return key

    def end(self, key: int) -> None:
        """The call noted by ``begin`` returned."""
        self.blocked.pop(key, None)

    # --- the I/O thread ------------------------------------------------------------------
    def _schedule(self) -> None:
        self.core.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        if self.core.closed:
            return
        report = {"blocked": self._blocked_calls(), "actors": self._actor_calls()}
        now = time.monotonic()
        empty = not report["blocked"] and not report["actors"]
        if report != self._sent or (not empty and now - self._sent_at > RESEND_S):
            self._send(report)
            self._sent, self._sent_at = report, now
        if empty and not self.blocked and not self._actors_seen:
            self._armed = False  # the next begin() arms it again
            return
        self._schedule()

    def _blocked_calls(self) -> list[dict]:
        now = time.time()
        store = self.core.store
        out = []
        for since, call, refs, task in list(self.blocked.values()):
            if now - since < REPORT_AFTER_S:
                continue
            missing, tasks = [], []
            for r in refs:
                e = store.get(r._id)
                if e is not None and e.state != PENDING:
                    continue
                missing.append(r._id.hex())
                rec = e.task if e is not None else None
                if rec is not None and len(tasks) < MAX_NAMED:
                    tasks.append([rec.spec["t"].hex(), rec.name or ""])
            out.append({"call": call, "since": since, "n": len(missing), "objects": missing[:MAX_NAMED],
                        "tasks": tasks, "task": task or ""})
        return out

    def _actor_calls(self) -> list[dict]:
        manager = self.core.actors
        if manager is None:
            return []
        out, pending = [], set()
        for st in list(manager.actors.values()):
            queued, inflight = len(st.queue) + st.waiting_args, len(st.inflight)
            if not queued and not inflight:
                continue
            pending.add(st.actor_id)
            if st.actor_id in self._actors_seen:  # waiting since the last tick at least
                out.append({"actor_id": st.actor_id.hex(), "class_name": st.class_name, "queued": queued,
                            "inflight": inflight, "state": str(st.state)})
        self._actors_seen = pending
        return out

    def _send(self, report: dict) -> None:
        core = self.core
        if core.gcs_fut is None:
            return
        body = {"pid": os.getpid(), "worker_id": core.worker_id, "node_id": core.node_id,
                "job_id": core.job_id or 0, "driver": core.executor is None,
                "what": "driver" if core.executor is None else (getattr(core.executor, "actor_name", "") or "worker"),
                **report}

        async def go() -> None:
            try:
                (await core.gcs()).notify("report_waits", body)
            except (ConnectionError, OSError):
                pass  # the control store is gone: nobody to tell

        import asyncio

        asyncio.ensure_future(go())

