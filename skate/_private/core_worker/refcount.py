"""Reference counting across processes, and freeing what nobody references.

::

    a ref is deserialized here   -> borrow_add to its owner (batched per owner);
                                    one in a task's arguments only at the reply,
                                    if it is still referenced then (its caller
                                    holds it until the reply)
    the last local ref goes      -> borrow_remove to its owner
    an owned object's count is 0 -> MemoryStore frees it -> obj_free to the
                                    node daemon holding its segment
    a borrower's connection dies -> its borrows are dropped

``RefCounting`` is one part of ``CoreWorker`` (see ``core``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from typing import Any

from skate import exceptions as exc
from skate._private import error_log, serialization, wire
from skate._private.core_worker.errors import as_error
from skate._private.core_worker.memory_store import ERROR, INLINE, SHM


class RefCounting:
    """Borrows, frees and unhandled-error reports (part of ``CoreWorker``)."""

    # --- reference counting -----------------------------------------------------------
    def on_serialize_ref(self, ref: Any) -> None:
        """A ref is being pickled: remember it for the payload that carries it."""
        refs = serialization.contained_refs()
        if refs is not None:
            refs.append(ref)

    def _on_borrow_change(self, oid: bytes, owner: list | None, delta: int) -> None:
        if owner is None or self.closed:
            return
        if delta > 0:
            if getattr(self.arg_scope, "on", False):
                # A task's argument: its caller keeps it alive until our reply,
                # so it is announced then, and only if still referenced.
                with self.deferred_lock:
                    self.deferred_borrows[oid] = owner
                return
            self.borrows_inflight += 1
            self._post_borrow_change(True, oid, owner)
        else:
            if self.deferred_borrows:
                with self.deferred_lock:
                    if self.deferred_borrows.pop(oid, None) is not None:
                        return  # never announced: nothing to take back
            self._post_borrow_change(False, oid, owner)

    def _post_borrow_change(self, adding: bool, oid: bytes, owner: list) -> None:
        """Hands one borrow (or its end) to the I/O thread (any thread): a burst
        of them, as a get of an object holding 10,000 refs makes, costs the I/O
        thread one wake-up, not one each."""
        with self.borrow_changes_lock:
            self.borrow_changes.append((adding, oid, owner))
            if self.borrow_changes_posted:
                return  # (the I/O thread has not taken the list yet: it takes this too)
            self.borrow_changes_posted = True
        self.post(self._take_borrow_changes)

    def _take_borrow_changes(self) -> None:
        with self.borrow_changes_lock:
            changes = self.borrow_changes
            self.borrow_changes = []
            self.borrow_changes_posted = False
        adds, removes = self._borrow_out, self._unborrow_out
        for adding, oid, owner in changes:
            self._queue_borrow(adds if adding else removes, oid, owner)

    def announce_deferred_borrows(self) -> None:
        """Announces the borrows of task arguments still referenced here (any
        thread; before a reply, which ends the caller's hold on them)."""
        with self.deferred_lock:
            # (posted before the table empties: a release racing this one finds
            # its ref here, waits for the lock and so posts after the borrow)
            for oid, owner in self.deferred_borrows.items():
                self.borrows_inflight += 1
                self._post_borrow_change(True, oid, owner)
            self.deferred_borrows.clear()

    def _queue_borrow(self, table: dict, oid: bytes, owner: list) -> None:
        key = owner[0]
        batch = table.get(key)
        if batch is None:
            table[key] = [owner, [oid]]
            if len(table) == 1:
                self.loop.call_soon(self._send_borrows, table)
        else:
            batch[1].append(oid)

    def _send_borrows(self, table: dict) -> None:
        items = list(table.values())
        table.clear()
        adding = table is self._borrow_out
        for owner, oids in items:
            asyncio.ensure_future(self._send_borrow_batch(owner, oids, adding))

    async def _send_borrow_batch(self, owner: list, oids: list, adding: bool) -> None:
        if adding:
            self._borrows_idle.clear()
        try:
            conn = await self.conn_to(owner)
            if adding:
                await conn.request("borrow_add", oids)
            else:
                conn.notify("borrow_remove", oids)
        except (ConnectionError, OSError, wire.RemoteError):
            pass  # the owner is gone; its objects went with it
        finally:
            if adding:
                self.borrows_inflight -= len(oids)
                if self.borrows_inflight <= 0:
                    self.borrows_inflight = 0
                    self._borrows_idle.set()

    async def flush_borrows(self) -> None:
        """Waits until every borrow this process announced was acknowledged."""
        await asyncio.sleep(0)
        while self.borrows_inflight > 0:
            self._borrows_idle.clear()
            if self.borrows_inflight <= 0:
                break
            await self._borrows_idle.wait()

    async def adopt_contained(self, oids: list, held: list, conn: Any, address: Any = None) -> None:
        """Takes over the refs that the values ``oids`` contain, which the worker
        that made them holds for us (``held``: ``[key, [[oid, owner], ...]]``,
        a reply's or a generator item's ``h``), then lets that worker drop its
        hold with ``release_held``, on ``conn`` or to its control endpoint at
        ``address``."""
        from skate.object_ref import ObjectRef

        refs = [ObjectRef(oid, owner) for oid, owner in held[1]]
        for oid in oids:
            e = self.store.get(oid)
            if e is not None:
                e.contained = refs
        await self.flush_borrows()
        if conn is None and address:
            try:
                conn = await self.conn_to(address)
            except (ConnectionError, OSError):
                return  # the worker is gone, and its holds with it
        if conn is not None and not conn.closed:
            conn.notify("release_held", held[0])

    def on_borrow_add(self, conn: wire.Connection, oids: list, bufs: list) -> bool:
        # Borrows are remembered per connection: a borrower that dies drops them.
        held = getattr(conn, "borrows", None)
        if held is None:
            held = conn.borrows = collections.Counter()
            conn.on_close.append(self._borrower_gone)
        for oid in oids:
            if self.store.adjust(oid, borrowers=+1):
                held[oid] += 1
        return True

    def on_borrow_remove(self, conn: wire.Connection, oids: list, bufs: list) -> None:
        held = getattr(conn, "borrows", None)
        for oid in oids:
            if held is not None and held.get(oid, 0) > 0:
                held[oid] -= 1
                if not held[oid]:
                    del held[oid]
                self.store.adjust(oid, borrowers=-1)

    def _borrower_gone(self, conn: wire.Connection) -> None:
        if self.closing:
            return
        held, conn.borrows = conn.borrows, collections.Counter()
        for oid, n in held.items():
            self.store.adjust(oid, borrowers=-n)

    def _on_free(self, oid: bytes, e: Any) -> None:
        if self.free_hooks:
            hook = self.free_hooks.pop(oid, None)
            if hook is not None and not self.closed:
                self.post(hook)
        state = e.state
        if state == INLINE:
            return
        if state == SHM and self.lineage.records:
            self.lineage.forget(oid)
        if state == SHM or (state == ERROR and not e.retrieved):
            with self._frees_lock:
                self._frees.append((oid, e))
                first = len(self._frees) == 1
            if first and not self.closed:
                self.post(self._flush_frees)

    def _send_local_frees(self) -> None:
        """Frees this node's segments now, from this thread (before a new reserve,
        so the node daemon can hand a just-freed warm segment to it)."""
        with self._frees_lock:
            if not self._frees:
                return
            local, rest = [], []
            for f in self._frees:
                (local if f[1].state == SHM and f[1].node_id in (self.node_id, None) else rest).append(f)
            if not local:
                return
            self._frees = rest
        if not self.raylet.closed:
            self.raylet.notify("obj_free", [oid for oid, _ in local])

    def _flush_frees(self) -> None:
        with self._frees_lock:
            frees, self._frees = self._frees, []
        for _oid, e in frees:
            if e.state == ERROR and not e.retrieved and not os.environ.get("SKATE_IGNORE_UNHANDLED_ERRORS"):
                try:
                    err = as_error(e.data, e.bufs)
                except Exception as x:  # noqa: BLE001
                    err = x
                if not isinstance(err, exc.TaskCancelledError):
                    text = f"Unhandled error (suppress with SKATE_IGNORE_UNHANDLED_ERRORS=1): {err}"
                    print(text, file=sys.stderr, flush=True)
                    self.printed.append(text)
                    error_log.record(err)
        by_node: dict[bytes, list] = {}
        for oid, e in frees:
            if e.state == SHM:
                by_node.setdefault(e.node_id, []).append(oid)
        for node_id, oids in by_node.items():
            if node_id == self.node_id or node_id is None:
                if not self.raylet.closed:
                    self.raylet.notify("obj_free", oids)
            else:
                asyncio.ensure_future(self._free_remote(node_id, oids))
                # A copy this node pulled (get, or wait's fetch_local) goes too: its
                # primary's node may be gone, and then nobody else would free it.
                if not self.raylet.closed:
                    self.raylet.notify("obj_free", oids)

    async def _free_remote(self, node_id: bytes, oids: list) -> None:
        """Frees objects whose primary copy lives on another node."""
        try:
            conn = await self.raylet_for(node_id)
            conn.notify("obj_free", oids)
        except Exception:  # noqa: BLE001 - the node is gone, and its objects with it
            pass

    async def raylet_for(self, node_id: bytes) -> wire.Connection:
        """A connection to the node daemon of ``node_id``."""
        if node_id == self.node_id:
            return self.raylet
        info = self._nodes.get(node_id)
        if info is None:
            gcs = await self.gcs()
            for n in await gcs.request("get_nodes"):
                self._nodes[n["node_id"]] = n
            info = self._nodes[node_id]
        return await self.submitter.raylet_conn(info)

