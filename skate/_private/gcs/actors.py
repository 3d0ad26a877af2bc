"""The actor directory of the control store: records, names, and waiting for states.

::

    register_actor  -> PENDING_CREATION record (+ name in its namespace)
    update_actor    -> ALIVE (address, incarnation) / RESTARTING / DEAD (cause);
                       wakes who waits; publishes "actor"
    worker or node died -> RESTARTING if the actor has restarts left (its
                       owner brings it back), else DEAD
    owner's connection closed -> its actors are DEAD, except detached actors
                       already created
    get_actor       -> the record, optionally once ALIVE (at some incarnation)
                       or DEAD, waiting a bounded time
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
        self.actors.set(info["actor_id"], dict(info, state=PENDING, handle=handle, num_restarts=0))

    def owner_gone(self, actor_ids: list[bytes]) -> None:
        """The process that created these actors is gone: they die with it,
        except detached actors that were created (nobody is left to restart
        those, so one being restarted dies too)."""
        for aid in actor_ids:
            actor = self.actors.get(aid)
            if actor is None or actor["state"] == DEAD:
                continue
            if not actor.get("detached"):
                self.update(aid, {"state": DEAD, "cause": "its owner (the process that created it) exited"})
            elif actor["state"] != ALIVE:
                self.update(
                    aid, {"state": DEAD, "cause": "its creator exited before the actor was created (or restarted)"}
                )

    def _restartable(self, actor: dict) -> bool:
        mr = actor.get("max_restarts") or 0
        return mr == -1 or actor.get("num_restarts", 0) < mr

    def update(self, aid: bytes, update: dict) -> None:
        """Applies a change to an actor's record (the first cause of death is kept)."""
        actor = self.actors.get(aid)
        if actor is None:
            return
        update = dict(update)
        fallback = update.pop("cause_if_unset", None)
        if actor["state"] == DEAD:
            return  # dead is final; keep the first cause
        if fallback is not None:
            # A node daemon saw the actor's worker exit.
            wid = update.get("worker_id")
            if wid is not None and actor.get("worker_id") not in (None, wid):
                return  # an earlier incarnation's worker
            if actor["state"] == RESTARTING:
                return  # its owner already restarts it
            if self._restartable(actor):
                update, fallback = {"state": RESTARTING}, None
        if update.get("state") == DEAD and actor["state"] == RESTARTING and not update.get("cause") and not fallback:
            fallback = "it died and could not be restarted"
        actor.update({k: v for k, v in update.items() if k != "actor_id"})
        if update.get("state") == ALIVE:
            actor["cause"] = None
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
            if actor.get("node_id") == node_id and actor["state"] not in (DEAD, RESTARTING):
                if self._restartable(actor):
                    self.update(aid, {"state": RESTARTING})
                else:
                    self.update(aid, {"state": DEAD, "cause": f"its node died ({why})"})

    async def get(
        self, aid: bytes, wait: bool = False, until_dead: bool = False, min_restarts: int = 0, timeout: float = 30.0
    ) -> dict | None:
        """An actor's public record.

        ``wait``: once it is ALIVE at incarnation ``min_restarts`` or later, or
        DEAD, but after ``timeout`` seconds at most; ``until_dead``: once DEAD
        (5 s at most).
        """
        actor = self.actors.get(aid)
        if actor is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def ready() -> bool:
            a = self.actors.get(aid)
            return a["state"] == DEAD or (a["state"] == ALIVE and a.get("num_restarts", 0) >= min_restarts)

        while wait and not ready() and loop.time() < deadline:
            fut = loop.create_future()
            self.actor_waiters.setdefault(aid, []).append(fut)
            try:
                await asyncio.wait_for(fut, deadline - loop.time())
            except asyncio.TimeoutError:
                break
        actor = self.actors.get(aid)
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
