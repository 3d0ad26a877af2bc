"""A task's results arriving at its owner: values stored, contained refs adopted, events noted."""

from __future__ import annotations

import asyncio
from typing import Any

from skate._private.core_worker import streams
from skate._private.core_worker.memory_store import SHM


def complete_returns(core: Any, rec: Any, body: dict, bufs: list, conn: Any = None) -> None:
    """Stores a task's return values from a worker's reply (``conn``: the
    connection it came on, for an actor call; a task's is its lease's)."""
    k = 0
    store = core.store
    metas = body["r"]
    shm = False
    for oid, meta in zip(rec.return_ids, metas, strict=False):
        state = meta[0]
        if state == SHM:
            store.complete(oid, SHM, None, [], meta[2], meta[3])
            shm = True
        else:
            n = meta[1]
            store.complete(oid, state, bufs[k], bufs[k + 1 : k + n])
            k += n
    ts = body.get("ts")
    if ts is not None and rec.lease is not None:
        lease = rec.lease
        err = body.get("err")
        core.task_events.record(  # (start, end, actor id, error, func, where)
            rec.spec["t"], rec.name, "FAILED" if err else "FINISHED", ts[0], ts[1], None, err,
            rec.func or rec.spec.get("n", ""), (lease.node_id, lease.worker_id, lease.pid or 0),
        )
    if "g" in body:  # a generator task ended
        streams.finish(core, rec, body, bufs[k:])
    if shm and conn is None:
        core.lineage.remember(rec)  # its arguments stay pinned: the task may run again
    else:
        rec.keep = None
    held = body.get("h")
    if held:  # (this may run in a user thread reading the reply: see wire.Connection.lead)
        if conn is None and rec.lease is not None:
            conn = rec.lease.conn
        core.post(lambda: asyncio.ensure_future(core.adopt_contained(rec.return_ids, held, conn)))
