"""The actor directory of the control store: records, names, and waiting for states.

::

    register_actor  -> PENDING_CREATION record (+ name in its namespace)
    ActorScheduler  -> ALIVE (address, incarnation) once created
    update_actor    -> DEAD (cause): killed, exited, constructor raised;
                       wakes who waits; publishes "actor"
    worker or node died -> RESTARTING with incarnation + 1 if the actor has
                       restarts left (on_restart: the scheduler brings it
                       back), else DEAD
    owner's connection closed -> its actors are DEAD (their workers killed),
                       except detached actors, which the scheduler still creates
    get_actor       -> the record, optionally once ALIVE (at some incarnation)
                       or DEAD, waiting a bounded time (also for an actor
                       whose registration is still on its way)
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
#: How long a lookup waits for an actor the control store has not heard of yet (s).
REGISTER_WAIT_S = 10.0


class ActorDirectory:
    """Actors by id and by name."""

    def __init__(self, storage: Storage, publish: Callable[[str, Any], None]) -> None:
        self.actors = Table(storage, "actors")
        self.named = Table(storage, "named_actors")  # (namespace, name) -> actor id
        self.publish = publish
        self.actor_waiters: dict[bytes, list[asyncio.Future]] = {}
        self.death_waiters: dict[bytes, list[asyncio.Future]] = {}
        self.register_waiters: dict[bytes, list[asyncio.Future]] = {}
        # Set by the scheduler (see actor_scheduler): what happens on a restart,
        # a death, an owner gone, and whether an actor's creation was handed over.
        self.on_restart: Callable[[bytes], None] = lambda aid: None
        self.on_dead: Callable[[bytes], None] = lambda aid: None
        self.on_owner_gone: Callable[[dict], None] = lambda actor: None
        self.has_creation: Callable[[bytes], bool] = lambda aid: False

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
        _wake(self.register_waiters.pop(info["actor_id"], []))

    def owner_gone(self, actor_ids: list[bytes]) -> None:
        """The process that created these actors is gone: they die with it (their
        workers are killed), except detached actors, which live on; a detached
        actor whose constructor never reached the control store dies too."""
        for aid in actor_ids:
            actor = self.actors.get(aid)
            if actor is None or actor["state"] == DEAD:
                continue
            if not actor.get("detached"):
                self.update(aid, {"state": DEAD, "cause": "its owner (the process that created it) exited"})
                self.on_owner_gone(actor)
            elif actor["state"] == PENDING and not self.has_creation(aid):
                self.update(aid, {"state": DEAD, "cause": "its creator exited before the actor's constructor was sent"})

    def restartable(self, actor: dict | None) -> bool:
        """Whether ``actor`` has restarts left (``max_restarts``; -1: forever)."""
        if actor is None:
            return False
        mr = actor.get("max_restarts") or 0
        return mr == -1 or actor.get("num_restarts", 0) < mr

    def lost(self, aid: bytes, cause: str) -> None:
        """The actor's worker (or node) died: RESTARTING at the next incarnation, or DEAD."""
        actor = self.actors.get(aid)
        if actor is None or actor["state"] in (DEAD, RESTARTING, PENDING):
            return
        if self.restartable(actor):
            self.update(aid, {"state": RESTARTING, "num_restarts": actor.get("num_restarts", 0) + 1})
            self.on_restart(aid)
            return
        if actor.get("max_restarts"):
            cause += f" (it had been restarted {actor.get('num_restarts', 0)} time(s): its max_restarts is spent)"
        self.update(aid, {"state": DEAD, "cause": cause})

    def update(self, aid: bytes, update: dict) -> None:
        """Applies a change to an actor's record (the first cause of death is kept).

        A node daemon's report that the actor's worker exited
        (``cause_if_unset``) counts only for the worker of the live
        incarnation: the actor restarts or dies (see ``lost``).
        """
        actor = self.actors.get(aid)
        if actor is None or actor["state"] == DEAD:
            return  # dead is final; keep the first cause
        update = dict(update)
        fallback = update.pop("cause_if_unset", None)
        if fallback is not None:
            wid = update.get("worker_id")
            if actor["state"] == ALIVE and actor.get("worker_id") in (None, wid):
                self.lost(aid, fallback)
            return  # (an earlier incarnation's worker, or one being created: the scheduler sees it)
        if update.get("state") == DEAD and not update.get("cause"):
            update["cause"] = "it died and could not be restarted"
        actor.update({k: v for k, v in update.items() if k != "actor_id"})
        if update.get("state") in (ALIVE, RESTARTING):
            actor["cause"] = None
        if actor["state"] == DEAD:
            actor.setdefault("dead_at", time.time())  # for purging the oldest
        self.actors.set(aid, actor)
        if actor["state"] == DEAD and actor.get("name"):
            key = (actor.get("namespace"), actor["name"])
            if self.named.get(key) == aid:
                self.named.delete(key)
        if actor["state"] == DEAD:
            _wake(self.death_waiters.pop(aid, []))
            self.on_dead(aid)
        if actor["state"] in (ALIVE, DEAD):
            _wake(self.actor_waiters.pop(aid, []))
        self.publish("actor", public(actor))

    def node_died(self, node_id: bytes, why: str) -> None:
        """Every actor on ``node_id`` is lost with it (restarted elsewhere, or dead)."""
        for aid, actor in self.actors.items():
            if actor.get("node_id") == node_id and actor["state"] == ALIVE:
                self.lost(aid, f"its node died ({why})")

    def public(self, aid: bytes) -> dict | None:
        """The public record of ``aid``."""
        actor = self.actors.get(aid)
        return None if actor is None else public(actor)

    async def get(
        self, aid: bytes, wait: bool = False, until_dead: bool = False, min_restarts: int = 0, timeout: float = 30.0
    ) -> dict | None:
        """An actor's public record.

        ``wait``: once it is ALIVE at incarnation ``min_restarts`` or later, or
        DEAD, but after ``timeout`` seconds at most; ``until_dead``: once DEAD
        (5 s at most).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        actor = self.actors.get(aid)
        if actor is None and wait:
            # Its registration may still be on its way (a handle can travel
            # faster than its owner's message): wait a bounded time for it.
            fut = loop.create_future()
            self.register_waiters.setdefault(aid, []).append(fut)
            try:
                await asyncio.wait_for(fut, min(timeout, REGISTER_WAIT_S))
            except asyncio.TimeoutError:
                waiting = self.register_waiters.get(aid, [])
                if fut in waiting:
                    waiting.remove(fut)
                if not waiting:
                    self.register_waiters.pop(aid, None)
            actor = self.actors.get(aid)
        if actor is None:
            return None

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
