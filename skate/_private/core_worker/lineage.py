"""Lineage: the owner re-runs the task that made an object whose copies were all lost.

::

    task result lands in shared memory  -> remember(rec): the task record and
                                            its arguments stay pinned while any
                                            of its results is referenced
    get() finds the segment gone (its node died)
        -> reconstruct(oid): lost arguments first (recursively), then the task
           runs again (one of its max_retries); get() reads the new copy
    every result freed                 -> forget(oid): the record and its
                                            arguments go
    more than max_lineage_entries      -> the oldest records go (their
                                            results can no longer be rebuilt)

    a borrower's get finds every copy gone
        -> recover(): reconstruct_object [oid, node it was lost on] to the
           owner, which rebuilds it (once, however many borrowers ask: a
           borrower naming a node the object no longer is on just waits for
           the new copy) and answers its new place, or the error

Like Ray: ``put`` objects are not rebuilt (``ObjectLostError``); a task
that has no retries left fails with
``ObjectReconstructionFailedMaxAttemptsExceededError``, one whose record was
evicted with ``ObjectReconstructionFailedLineageEvictedError``; a borrower
whose owner is gone gets ``OwnerDiedError``.  Actor call results are not
rebuilt.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from skate import exceptions as exc
from skate._private import wire
from skate._private.config import CONFIG
from skate._private.core_worker.memory_store import PENDING, SHM


class Lineage:
    """The task records behind this process's shared-memory task results."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.records: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.evicted: set[bytes] = set()
        self._rebuilding: dict[bytes, asyncio.Future] = {}
        #: Task re-runs started to rebuild lost objects (for tests and figures).
        self.rebuilt = 0

    def remember(self, rec: Any) -> None:
        """Keeps ``rec`` (and its pinned arguments) for its shared-memory results."""
        store = self.core.store
        for oid in rec.return_ids:
            e = store.get(oid)
            if e is not None and e.state == SHM:
                self.records[oid] = rec
        while len(self.records) > CONFIG.max_lineage_entries:
            oid, _ = self.records.popitem(last=False)
            if len(self.evicted) < 100_000:
                self.evicted.add(oid)

    def forget(self, oid: bytes) -> None:
        """The object is freed: its record goes once no result of the task needs it."""
        self.records.pop(oid, None)
        self.evicted.discard(oid)

    async def reconstruct(self, oid: bytes) -> tuple:
        """Re-runs the task behind ``oid`` (once per loss, shared by concurrent callers);
        returns the object's new snapshot ``(state, data, bufs, node_id, size)``.

        Raises ``ObjectLostError`` (a subclass) when it cannot.
        """
        fut = self._rebuilding.get(oid)
        if fut is None:
            fut = self._rebuilding[oid] = asyncio.ensure_future(self._reconstruct(oid, set()))
            fut.add_done_callback(lambda f: self._rebuilding.pop(oid, None))
        return await asyncio.shield(fut)

    async def _reconstruct(self, oid: bytes, seen: set) -> tuple:
        rec = self.records.get(oid)
        if rec is None:
            if oid in self.evicted:
                raise exc.ObjectReconstructionFailedLineageEvictedError(oid.hex())
            raise exc.ObjectLostError(
                oid.hex(), message=f"Object {oid.hex()} is lost: its only copy was on a node that died, and "
                "objects made with put() cannot be rebuilt."
            )
        if rec.retries_left == 0:
            raise exc.ObjectReconstructionFailedMaxAttemptsExceededError(oid.hex())
        if rec.retries_left > 0:
            rec.retries_left -= 1
        seen.add(oid)
        # Arguments on dead nodes come back first.
        alive = await self._alive_nodes()
        for ref in rec.keep or ():
            e = self.core.store.get(ref._id)
            if e is not None and e.state == SHM and e.node_id not in alive and ref._id not in seen:
                try:
                    await self._reconstruct(ref._id, seen)
                except exc.ObjectLostError as lost:
                    raise exc.ObjectReconstructionFailedError(
                        oid.hex(), message=f"Object {oid.hex()} cannot be rebuilt: its argument is lost too ({lost})"
                    ) from None
        store = self.core.store
        waits = []
        with store.lock:
            for rid in rec.return_ids:
                e = store.get(rid)
                if e is not None and e.state != PENDING:
                    e.state, e.data, e.bufs, e.node_id, e.size = PENDING, None, [], None, 0
        loop = asyncio.get_running_loop()
        for rid in rec.return_ids:
            f = loop.create_future()
            e = store.add_waiter(rid, lambda f=f: loop.call_soon_threadsafe(_done, f))
            if e is None:
                waits.append(f)
        rec.cancelled = False
        rec.lease = None
        self.rebuilt += 1
        self.core.submitter.submit(rec)
        await asyncio.gather(*waits)
        e = store.get(oid)
        if e is None:
            raise exc.ObjectLostError(oid.hex(), message=f"Object {oid.hex()} was freed while it was rebuilt.")
        return (e.state, e.data, e.bufs, e.node_id, e.size)

    # --- borrowers ----------------------------------------------------------------
    async def recover(self, oid: bytes, owner: list | None, lost_node: bytes | None, err: BaseException) -> tuple:
        """A new snapshot of ``oid`` after reading its copy on ``lost_node`` failed with ``err``.

        The owner rebuilds it itself; a borrower asks the owner to.  Raises
        ``err`` when the object cannot be rebuilt here (a ``put`` object of
        this process), the owner's ``ObjectLostError`` subclass when it
        cannot rebuild it, ``OwnerDiedError`` when the owner is gone.
        """
        if oid in self.records or oid in self.evicted:
            return await self.reconstruct(oid)
        core = self.core
        if owner is None or owner[0] == core.worker_id:
            raise err
        try:
            conn = await core.conn_to(owner)
            reply = await conn.request("reconstruct_object", [oid, lost_node])
        except (ConnectionError, OSError, asyncio.TimeoutError):
            raise exc.OwnerDiedError(oid.hex()) from None
        body, bufs = reply if isinstance(reply, tuple) else (reply, [])
        if body[0] == "lost":
            cls = getattr(exc, body[1], None)
            if not (isinstance(cls, type) and issubclass(cls, exc.ObjectLostError)):
                cls = exc.ObjectLostError
            raise cls(oid.hex(), message=body[2])
        state, node_id, size = body
        return (state, bufs[0] if bufs else None, bufs[1:], node_id, size)

    async def on_reconstruct_object(self, conn: wire.Connection, body: list, bufs: list) -> wire.Reply:
        """A borrower lost every copy of an object this process owns: rebuild it."""
        oid, lost_node = body
        core = self.core
        e = core.store.get(oid)
        if e is None:
            return wire.Reply(["lost", "ObjectLostError", f"Object {oid.hex()} was already freed by its owner."])
        try:
            if e.state == SHM and e.node_id == lost_node:
                snap = await self.reconstruct(oid)
            else:  # rebuilt already, or being rebuilt: its new copy
                snap = await core.resolve(oid, None)
        except exc.ObjectLostError as err:
            return wire.Reply(["lost", type(err).__name__, str(err)])
        state, data, vbufs, node_id, size = snap
        if state == SHM:
            return wire.Reply([state, node_id, size])
        return wire.Reply([state, node_id, size], [data, *vbufs])

    async def _alive_nodes(self) -> set:
        gcs = await self.core.gcs()
        return {n["node_id"] for n in await gcs.request("get_nodes") if n["alive"]}


def _done(f: asyncio.Future) -> None:
    if not f.done():
        f.set_result(None)
