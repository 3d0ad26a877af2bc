"""The actor directory of the control store: records, names, and waiting for states.

::

    register_actor  -> PENDING_CREATION record (+ name in its namespace)
    update_actor    -> ALIVE (address) / DEAD (cause); wakes who waits; publishes "actor"
    get_actor       -> the record, optionally once ALIVE/DEAD or once DEAD
    get_named_actor -> by (namespace, name), with the pickled handle metadata

A dead actor's name is free again at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from skate._private.gcs.storage import Storage, Table

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"


class ActorDirectory:
    """Actors by id and by name."""

    def __init__(self, storage: Storage, publish: Callable[[str, Any], None]) -> None:
        self.actors = Table(storage, "actors")
        self.named = Table(storage, "named_actors")  # (namespace, name) -> actor id
        self.publish = publish
        self.actor_waiters: dict[bytes, list[asyncio.Future]] = {}
        self.death_waiters: dict[bytes, list[asyncio.Future]] = {}

    def register(self, info: dict, handle: bytes) -> None:
        """Records a new actor; raises ``ValueError`` when its name is taken."""
        if info["actor_id"] in self.actors:
            return  # sent again after a control-store restart: already recorded
        name, ns = info.get("name"), info.get("namespace")
        if name:
            existing = self.named.get((ns, name))
            if existing is not None and self.actors.get(existing)["state"] != DEAD:
                raise ValueError(
                    f"the actor name {name!r} is already taken in namespace {ns!r}; "
                    "use get_actor() to get a handle, or options(get_if_exists=True)"
                )
            self.named.set((ns, name), info["actor_id"])
        self.actors.set(info["actor_id"], dict(info, state=PENDING, handle=handle))

    def update(self, aid: bytes, update: dict) -> None:
        """Applies a change to an actor's record (the first cause of death is kept)."""
        actor = self.actors.get(aid)
        if actor is None:
            return
        update = dict(update)
        fallback = update.pop("cause_if_unset", None)
        if actor["state"] == DEAD and update.get("state") == DEAD:
            return  # already dead; keep the first cause
        actor.update({k: v for k, v in update.items() if k != "actor_id"})
        if actor["state"] == DEAD:
            actor.setdefault("dead_at", time.time())  # for purging the oldest
        if fallback and not actor.get("cause"):
            actor["cause"] = fallback
        self.actors.set(aid, actor)
        if actor["state"] == DEAD and actor.get("name"):
            key = (actor.get("namespace"), actor["name"])
            if self.named.get(key) == aid:
                self.named.delete(key)
        if actor["state"] == DEAD:
            _wake(self.death_waiters.pop(aid, []))
        if actor["state"] in (ALIVE, DEAD):
            _wake(self.actor_waiters.pop(aid, []))
        self.publish("actor", public(actor))

    def node_died(self, node_id: bytes, why: str) -> None:
        """Every actor on ``node_id`` is dead."""
        for aid, actor in self.actors.items():
            if actor.get("node_id") == node_id and actor["state"] != DEAD:
                self.update(aid, {"state": DEAD, "cause": f"its node died ({why})"})

    async def get(self, aid: bytes, wait: bool = False, until_dead: bool = False) -> dict | None:
        """An actor's public record; ``wait``: once ALIVE or DEAD; ``until_dead``: once DEAD (5 s at most)."""
        actor = self.actors.get(aid)
        if actor is None:
            return None
        if wait and actor["state"] not in (ALIVE, DEAD):
            fut = asyncio.get_running_loop().create_future()
            self.actor_waiters.setdefault(aid, []).append(fut)
            await fut
        if until_dead and actor["state"] != DEAD:
            fut = asyncio.get_running_loop().create_future()
            self.death_waiters.setdefault(aid, []).append(fut)
            try:
                await asyncio.wait_for(fut, 5.0)
            except asyncio.TimeoutError:
                pass
        return public(self.actors.get(aid))

    def by_name(self, namespace: str | None, name: str) -> dict | None:
        """The full record of the live actor named ``name`` in ``namespace``, or None."""
        aid = self.named.get((namespace, name))
        return None if aid is None else self.actors.get(aid)

    def names(self, namespace: str | None, all_namespaces: bool) -> list[dict]:
        return [
            {"name": name, "namespace": ns}
            for (ns, name), _aid in self.named.items()
            if all_namespaces or ns == namespace
        ]


def public(actor: dict) -> dict:
    """An actor record without its pickled handle metadata."""
    return {k: v for k, v in actor.items() if k not in ("handle", "dead_at")}


def _wake(futs: list[asyncio.Future]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)
