"""The object manager: this node's shared-memory objects, as daemons and processes see them.

::

    obj_reserve -> ObjectStore makes room (spilling LRU objects) -> segment path
    obj_seal    -> readable
    obj_get     -> here (restored from disk if spilled), or pulled from the node
                   that has it (obj_fetch, daemon to daemon); the reader is
                   counted until obj_unmapped (or its connection closes)
    obj_free    -> gone here, and on every node that pulled a copy
    obj_write / obj_read -> the bytes themselves, for a driver on a host
                   with no node daemon (it cannot map this node's segments)

``ObjectManager`` is one part of ``Raylet`` (see ``server``).
"""

from __future__ import annotations

import asyncio

from skate._private import wire
from skate._private.object_store import shm
from skate._private.object_store.store import StoreFull


class ObjectStoreFull(Exception):
    """Raised to a producer when no room can be made."""


class ObjectManager:
    """Object handlers of the node daemon (part of ``Raylet``)."""

    def on_obj_reserve(self, conn: wire.Connection, body: dict, bufs: list) -> str:
        try:
            return self.store.reserve(body["oid"], body["size"], body.get("primary", True))
        except StoreFull as e:
            raise ObjectStoreFull(str(e)) from None

    def on_obj_seal(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        self.store.seal(body["oid"])

    async def on_obj_get(self, conn: wire.Connection, body: dict, bufs: list) -> str:
        oid = body["oid"]
        path = self.store.ensure_local(oid)
        if path is None:
            path = await self._fetch(oid, body.get("node_id"))
        self._track_map(conn, oid)
        return path

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
        for oid, n in conn.maps.items():
            for _ in range(n):
                self.store.map_removed(oid)
        conn.maps = {}

    async def _fetch(self, oid: bytes, src: bytes | None) -> str:
        if src is None or src == self.node_id:
            raise KeyError(f"object {oid.hex()} is not in this node's store (it was freed or lost)")
        fut = self.pulls.get(oid)
        if fut is None:
            fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, src))
            fut.add_done_callback(lambda f: self.pulls.pop(oid, None))
        return await asyncio.shield(fut)

    async def _pull(self, oid: bytes, src: bytes) -> str:
        peer = await self._peer(src)
        reply = await peer.request("obj_fetch", {"oid": oid, "node_id": self.node_id})
        if not isinstance(reply, tuple):
            raise KeyError(f"object {oid.hex()} is gone from the node that held it")
        data = reply[1][0]
        path = self.store.reserve(oid, len(data), primary=False)
        m = shm.create(path, max(len(data), 1))
        m[: len(data)] = data
        m.close()
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
        data = self.store.read_bytes(body["oid"])
        if data is None:
            return wire.Reply(False)
        self.pulled_by.setdefault(body["oid"], set()).add(body["node_id"])
        return wire.Reply(True, [data])

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
        for oid in oids:
            self.store.free(oid)
            for node_id in self.pulled_by.pop(oid, ()):
                asyncio.ensure_future(self._forward_free(node_id, oid))

    async def _forward_free(self, node_id: bytes, oid: bytes) -> None:
        try:
            peer = await self._peer(node_id)
            peer.notify("obj_free", [oid])
        except Exception:
            pass

