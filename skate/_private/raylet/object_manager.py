"""The object manager: this node's shared-memory objects, as daemons and processes see them.

::

    obj_reserve -> ObjectStore makes room (spilling LRU objects) -> segment path,
                   or a slot's location for objects of up to 1 MiB (``slab``)
    obj_seal    -> readable
    obj_get(_many) -> here (restored from disk if spilled), or pulled from the node
                   that has it (obj_fetch, daemon to daemon); the reader is
                   counted until obj_unmapped (or its connection closes)
    obj_fetch   -> a chunk of an object, for a node pulling it (see ``transfer``)
    obj_free    -> gone here, and on every node that pulled a copy
    owner dies  -> every primary segment it owned here is freed as by obj_free
                   (the daemon holds a connection to each owner it stores for,
                   and its closing is the owner's death)
    obj_write / obj_read -> the bytes themselves, for a driver on a host
                   with no node daemon (it cannot map this node's segments)

``ObjectManager`` is one part of ``Raylet`` (see ``server``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from skate._private import wire
from skate._private.object_store import shm, slab
from skate._private.object_store.store import StoreFull, spill_files
from skate._private.raylet import transfer

#: Seconds a reservation waits for readers to unmap objects (or writers to seal
#: theirs) before it settles for a disk-backed segment.
ROOM_WAIT_S = 2.0


class ObjectStoreFull(Exception):
    """Raised to a producer when no room can be made."""


class ObjectManager:
    """Object handlers of the node daemon (part of ``Raylet``)."""

    def on_obj_reserve(self, conn: wire.Connection, body: dict, bufs: list) -> Any:
        store = self.store
        oid, size = body["oid"], body["size"]
        if oid not in store.objects and store.needs_room(size, slot=True) and not any(size <= psize for psize, _ in store.pool):
            return self._reserve_after_spill(conn, body)  # answered once there is room
        return self._reserve(body)

    async def _reserve_after_spill(self, conn: wire.Connection, body: dict) -> str:
        size = body["size"]
        try:
            await self._spill_for(slab.size_class(size) if self.store.slabs.fits(size) else size, body["oid"])
        except StoreFull:
            # Nothing more can leave memory now (readers map the rest, or it is
            # being written): like Ray's fallback allocation, the object goes to disk.
            return self._reserve(body, disk=True)
        return self._reserve(body)

    def _reserve(self, body: dict, disk: bool = False) -> str:
        oid, size, primary = body["oid"], body["size"], body.get("primary", True)
        try:
            try:
                path = self.store.reserve(oid, size, primary, disk=disk, slot=True)
            except StoreFull:
                if disk:
                    raise
                path = self.store.reserve(oid, size, primary, disk=True)
        except StoreFull as e:
            raise ObjectStoreFull(str(e)) from None
        owner = body.get("owner")
        if owner and body.get("primary", True):
            self._owned_by(body["oid"], owner)
        return path

    # --- owners -----------------------------------------------------------------------
    def _owned_by(self, oid: bytes, owner: list) -> None:
        wid = owner[0]
        self.owner_of[oid] = wid
        self.owned.setdefault(wid, set()).add(oid)
        if wid not in self.owner_watches:
            self.owner_watches[wid] = asyncio.ensure_future(self._watch_owner(owner))

    async def _watch_owner(self, owner: list) -> None:
        """Frees the owner's objects when its connection closes (it died or shut down)."""
        wid = owner[0]
        target = owner[3] if len(owner) > 3 and owner[3] and os.path.exists(owner[3]) else (owner[1], owner[2])
        try:
            conn = await wire.connect(target, self.token, {}, timeout=10.0)
        except (OSError, asyncio.TimeoutError):
            self._owner_gone(wid)
            return
        if self.stopping.is_set():
            conn.close()
            return
        self.owner_conns[wid] = conn
        conn.on_close.append(lambda c: self._owner_gone(wid))
        if conn.closed:  # it went while the handshake ended: the callback came too late
            self._owner_gone(wid)

    def _owner_gone(self, wid: bytes) -> None:
        self.owner_watches.pop(wid, None)
        self.owner_conns.pop(wid, None)
        if self.stopping.is_set():
            return
        oids = self.owned.pop(wid, set())
        if oids:
            self._free(list(oids))

    def on_obj_seal(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        self.store.seal(body["oid"])

    # --- spilling and restoring, off the event loop --------------------------------
    async def _spill_for(self, size: int, oid: bytes) -> None:
        """Makes room for ``size`` bytes, copying spilled segments to disk on a
        worker thread: a multi-GB spill does not stall heartbeats or requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROOM_WAIT_S
        while True:
            try:
                victims = self.store.plan_room(size, oid)
                break
            except StoreFull:
                # Objects readers map now are neither dropped nor spilled: wait a
                # little for them to be let go before giving up.
                if size > self.store.capacity or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)
        if not victims:
            return
        try:
            dests = await asyncio.to_thread(spill_files, self.store.spill_dir, victims)
        except BaseException:
            for key, obj in victims:  # still in memory after all
                obj.spilling = False
                if not obj.freed:
                    self.store.used += obj.held
                elif self.store.mapped.get(key):  # freed, but a reader maps it: released when unmapped
                    self.store.used += obj.held
                    self.store.zombies[key] = obj
                else:
                    self.store.drop_memory(obj)
            raise
        self.store.finish_spill(victims, dests)

    async def _ensure_local(self, oid: bytes) -> str | None:
        """Like ``store.ensure_local``, with the disk copies on a worker thread."""
        obj = self.store.objects.get(oid)
        if obj is None or not obj.sealed or not obj.spilled_path:
            return self.store.ensure_local(oid)
        fut = self.restores.get(oid)
        if fut is None:
            fut = self.restores[oid] = asyncio.ensure_future(self._restore(oid, obj))
            fut.add_done_callback(lambda f: self.restores.pop(oid, None))
        return await asyncio.shield(fut)

    async def _restore(self, oid: bytes, obj: Any) -> str | None:
        while True:
            await self._spill_for(obj.size, oid)
            # Other restores may have taken the room made while this one's spill
            # was being copied out: plan again until it is still there now.
            if self.store.used + obj.size <= self.store.capacity:
                break
        self.store.used += obj.size
        try:
            await asyncio.to_thread(shm.copy_in, obj.spilled_path, obj.path)
        except FileNotFoundError:  # freed meanwhile
            self.store.used -= obj.size
            shm.unlink(obj.path)
            return None
        self.store.finish_restore(oid, obj)
        return obj.path if self.store.objects.get(oid) is obj else None

    async def on_obj_get(self, conn: wire.Connection, body: dict, bufs: list) -> str:
        oid = body["oid"]
        # Counted as read first: a copy restored from disk or pulled for this
        # reader is not spilled again before the reader has mapped it.
        self._track_map(conn, oid)
        try:
            path = await self._ensure_local(oid)
            if path is None:
                path = await self._fetch(oid, body.get("node_id"))
        except BaseException:
            self.on_obj_unmapped(conn, [oid], [])
            raise
        return path

    async def on_obj_get_many(self, conn: wire.Connection, body: dict, bufs: list) -> list:
        """``obj_get`` of many objects: their paths, each reader-counted as by
        ``obj_get``; None for one that could not be had (the reader asks for it
        alone, with ``obj_get``, to learn why)."""
        objects = self.store.objects
        paths: list = []
        slow = []
        for i, oid in enumerate(body["oids"]):
            obj = objects.get(oid)
            if obj is not None and obj.sealed and not obj.spilled_path:  # the common case, no await
                objects.move_to_end(oid)
                self._track_map(conn, oid)
                paths.append(obj.location)
            else:
                slow.append(i)
                paths.append(None)
        if slow:
            got = await asyncio.gather(*(self.on_obj_get(conn, {"oid": body["oids"][i], "node_id": body["node_ids"][i]}, [])
                                         for i in slow), return_exceptions=True)
            for i, path in zip(slow, got, strict=True):
                paths[i] = path if isinstance(path, str) else None
        return paths

    def _track_map(self, conn: wire.Connection, oid: bytes) -> None:
        maps = getattr(conn, "maps", None)
        if maps is None:
            maps = conn.maps = {}
            conn.on_close.append(self._reader_gone)
        maps[oid] = maps.get(oid, 0) + 1
        self.store.map_added(oid)

    def on_obj_unmapped(self, conn: wire.Connection, oids: list, bufs: list) -> None:
        maps = getattr(conn, "maps", {})
        for oid in oids:
            n = maps.get(oid, 0)
            if n:
                maps[oid] = n - 1
                if n == 1:
                    del maps[oid]
                self.store.map_removed(oid)

    def _reader_gone(self, conn: wire.Connection) -> None:
        maps, conn.maps = conn.maps, {}
        if not maps:
            return
        pid = conn.peer_pid
        if pid and pid != os.getpid() and self._hold_until_exit(pid, maps):
            return
        self._release_maps(maps)

    def _hold_until_exit(self, pid: int, maps: dict) -> bool:
        """Keeps what a reader that closed its connection but lives on maps
        until its process exits (a driver after ``shutdown()`` may still hold
        values: their slots must not be reused or zeroed under it); False when
        it has exited already.  Watched with a pidfd, readable at its exit."""
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # gone already (or no pidfds here)
            return False
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._release_maps(maps)

        loop.add_reader(fd, exited)
        return True

    def _release_maps(self, maps: dict) -> None:
        for oid, n in maps.items():
            for _ in range(n):
                self.store.map_removed(oid)

    async def _fetch(self, oid: bytes, src: bytes | None) -> str:
        if src is None or src == self.node_id:
            raise KeyError(f"object {oid.hex()} is not in this node's store (it was freed or lost)")
        fut = self.pulls.get(oid)
        if fut is None:
            fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, src))
            fut.add_done_callback(lambda f: self.pulls.pop(oid, None))
        return await asyncio.shield(fut)

    async def _pull(self, oid: bytes, src: bytes) -> str:
        """Copies an object from node ``src`` in chunks (see ``transfer``): this
        daemon's memory stays bounded whatever the object's size."""
        peer = await self._peer(src)

        async def fetch(offset: int) -> tuple[int, Any]:
            reply = await peer.request("obj_fetch", {"oid": oid, "node_id": self.node_id, "offset": offset,
                                                     "length": transfer.PULL_CHUNK})
            if not isinstance(reply, tuple) or reply[0] is False:
                raise KeyError(f"object {oid.hex()} is gone from the node that held it")
            return reply[0], reply[1][0]

        async def reserve(size: int) -> str:
            disk = False
            if oid not in self.store.objects and self.store.needs_room(size):
                try:
                    await self._spill_for(size, oid)
                except StoreFull:
                    disk = True  # no room can be made: a disk-backed segment
            return self.store.reserve(oid, size, primary=False, disk=disk)

        path = await transfer.pull(oid, fetch, reserve, lambda: self.store.free(oid), self.pull_budget)
        self.store.seal(oid)
        return path

    async def _peer(self, node_id: bytes) -> wire.Connection:
        fut = self.peer_conns.get(node_id)
        if fut is None or (fut.done() and (fut.exception() or fut.result().closed)):
            info = self.peers.get(node_id)
            if info is None or not info.get("alive", True):
                raise ConnectionError(f"node {node_id.hex()} is not alive")
            fut = self.peer_conns[node_id] = asyncio.ensure_future(
                wire.connect((info["ip"], info["port"]), self.token, self.handlers, expect=node_id)
            )
        return await asyncio.shield(fut)

    def on_obj_fetch(self, conn: wire.Connection, body: dict, bufs: list) -> wire.Reply:
        """One chunk of an object: replies its total size with ``length`` bytes from ``offset``."""
        oid = body["oid"]
        offset, length = body.get("offset", 0), body.get("length", transfer.PULL_CHUNK)
        got = self.store.read_range(oid, offset, min(length, transfer.PULL_CHUNK))
        if got is None:
            return wire.Reply(False)
        size, data = got
        if offset == 0:
            self.pulled_by.setdefault(oid, set()).add(body["node_id"])
        return wire.Reply(size, [data])

    def on_obj_write(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        """Stores an object sent over the wire by a driver whose host has no node daemon."""
        data = bufs[0]
        try:
            path = self.store.reserve(body["oid"], len(data))
        except StoreFull as e:
            raise ObjectStoreFull(str(e)) from None
        m = shm.create(path, max(len(data), 1))
        m[: len(data)] = data
        m.close()
        self.store.seal(body["oid"])
        return True

    async def on_obj_read(self, conn: wire.Connection, body: dict, bufs: list) -> wire.Reply:
        """An object's bytes, for a driver whose host has no node daemon (pulled here first if need be)."""
        oid = body["oid"]
        if self.store.ensure_local(oid) is None:
            await self._fetch(oid, body.get("node_id"))
        data = self.store.read_bytes(oid)
        if data is None:
            raise KeyError(f"object {oid.hex()} is not in this node's store (it was freed or lost)")
        return wire.Reply(True, [data])

    def on_obj_free(self, conn: wire.Connection, oids: list, bufs: list) -> None:
        self._free(oids)

    def _free(self, oids: list) -> None:
        for oid in oids:
            wid = self.owner_of.pop(oid, None)
            if wid is not None:
                owned = self.owned.get(wid)
                if owned is not None:
                    owned.discard(oid)
            self.store.free(oid)
            for node_id in self.pulled_by.pop(oid, ()):
                asyncio.ensure_future(self._forward_free(node_id, oid))

    async def _forward_free(self, node_id: bytes, oid: bytes) -> None:
        try:
            peer = await self._peer(node_id)
            peer.notify("obj_free", [oid])
        except Exception:
            pass

