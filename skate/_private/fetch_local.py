"""``wait(fetch_local=True)``: ready values held on other nodes are copied here first.

Like Ray, a ref ``wait`` returns as ready (by default) has its value on this
node, so a ``get`` right after does not transfer it.  Inline values travel
with their owner's reply anyway; only shared-memory values held by another
node's store are pulled, through this node's daemon (which counts this
process as a reader until told the mapping is gone, at once here).
"""

from __future__ import annotations

import asyncio
from typing import Any

from skate._private.core_worker.memory_store import SHM


def make_local(core: Any, refs: list) -> None:
    """Pulls the shared-memory values of ``refs`` that live on other nodes to this node."""
    local = core.node_id
    pulls: list = []
    asks: list = []
    for r in refs:
        e = core.store.get(r._id)
        if e is None:
            asks.append(r)
        elif e.state == SHM and e.node_id is not None and e.node_id != local:
            pulls.append((r._id, e.node_id))
    if not pulls and not asks:
        return

    async def go() -> None:
        snaps = await asyncio.gather(*(core.fetch_remote(r._id, r._owner, ready_only=True) for r in asks))
        for r, snap in zip(asks, snaps, strict=True):
            state, node_id = snap[0], snap[3]
            if state == SHM and node_id is not None and node_id != local:
                pulls.append((r._id, node_id))
        await asyncio.gather(*(pull(oid, node_id) for oid, node_id in pulls))

    async def pull(oid: bytes, node_id: bytes) -> None:
        try:
            await core.shm_path(oid, node_id)
        except Exception:  # noqa: BLE001 - a lost value is reported by get, not by wait
            return
        core.raylet.notify("obj_unmapped", [oid])

    core.call(go())
