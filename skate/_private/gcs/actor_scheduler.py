"""Creating and restarting actors, driven by the control store.

The process that calls ``Cls.remote()`` (the owner) registers the actor,
resolves the constructor's arguments and hands the creation over with one
``schedule_actor`` request; from then on the control store owns it::

    schedule_actor --> lease a worker (the owner's node daemon first, then
                       where it spills to) --> create_actor on the worker's
                       execution endpoint --> ALIVE (address, incarnation)
                                          \\-> constructor raised: DEAD (cause)
    worker or node died (ActorDirectory) --> RESTARTING, incarnation + 1
                       --> lease and create again (constructor re-run)
    owner gone (not detached) --> DEAD; its worker is killed

Many creations run at once (one coroutine each), so creating many actors
costs no round trip per actor on the owner's side.  The owner's reply comes
when the first incarnation is up (or could not be created); callers follow
later incarnations through ``get_actor`` like everyone else.  The creation
(its spec and buffers) is kept in the ``actor_specs`` table for restarts
until the actor is dead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from skate._private import hostaddr, wire
from skate._private.gcs.actors import ALIVE, DEAD, ActorDirectory
from skate._private.gcs.storage import Storage, Table

log = logging.getLogger(__name__)

#: How long a lease may keep failing (its node dying, say) before the actor is given up (s).
LEASE_RETRY_S = 60.0
#: Creations of one actor that fail in a row on lost workers before it is declared dead.
MAX_LOST_CREATIONS = 5


class Unschedulable(Exception):
    """No node can ever host the actor."""


class EnvSetupFailed(Exception):
    """The node could not set the actor's runtime_env up."""


class ActorScheduler:
    """Leases workers for actors and runs their constructors (part of the control store)."""

    def __init__(self, storage: Storage, directory: ActorDirectory, nodes: Any, token: bytes) -> None:
        self.specs = Table(storage, "actor_specs")  # actor id -> [spec, bufs, lease body, via node id]
        self.dir = directory
        self.nodes = nodes
        self.token = token
        self.raylets: dict[tuple, asyncio.Future] = {}
        self.running: dict[bytes, asyncio.Task] = {}
        #: Owners waiting for the first incarnation: actor id -> (future of the reply, owner's connection).
        self.first: dict[bytes, tuple[asyncio.Future, Any]] = {}
        #: Workers running a constructor: actor id -> (node daemon connection, grant).
        self.creating: dict[bytes, tuple[Any, dict]] = {}
        #: Lease requests in flight per node daemon connection: owners to warn about infeasible ones.
        self.asking: dict[int, set] = {}
        directory.on_restart = self.restart
        directory.on_owner_gone = lambda actor: self.kill(actor["actor_id"])

    # --- entry points ------------------------------------------------------------------
    async def schedule(self, conn: Any, body: dict, bufs: list) -> wire.Reply:
        """Creates the actor ``body["actor_id"]``; answers once its first incarnation is up or failed."""
        aid = body["actor_id"]
        actor = self.dir.actors.get(aid)
        if actor is None:
            return wire.Reply({"ok": False, "cause": "the control store does not know the actor"})
        if actor["state"] == DEAD:
            return wire.Reply({"ok": False, "cause": actor.get("cause") or "it is dead"})
        if actor["state"] == ALIVE:  # sent again after a control-store restart that carried it on
            return wire.Reply({"ok": True, "actor": self.dir.public(aid)})
        # (Copies: the buffers may be views of a receive buffer; restarts need them later.)
        self.specs.set(aid, [body["spec"], [bytes(b) for b in bufs], body["lease"], body.get("via")])
        fut = asyncio.get_running_loop().create_future()
        self.first[aid] = (fut, conn)
        self._start(aid)
        return await fut

    def restart(self, aid: bytes) -> None:
        """The directory made ``aid`` RESTARTING: bring it back."""
        if aid in self.specs:
            self._start(aid)

    def resume(self) -> None:
        """After a control-store restart: carries on the creations that were under way."""
        for aid, actor in self.dir.actors.items():
            if actor["state"] not in (ALIVE, DEAD) and aid in self.specs:
                self._start(aid)

    def kill(self, aid: bytes) -> None:
        """Ends the process of an actor declared dead (killed, or its owner gone), even mid-constructor."""
        creating = self.creating.pop(aid, None)
        if creating is not None:
            creating[0].notify("return_lease", {"lease_id": creating[1]["lease_id"], "kill": True})
            return
        actor = self.dir.actors.get(aid)
        if actor is not None:
            self._kill_worker(actor)

    def _kill_worker(self, actor: dict) -> None:
        node = self.nodes.nodes.get(actor.get("node_id")) if actor.get("node_id") else None
        wid = actor.get("worker_id")
        if node is None or wid is None or not node.get("alive"):
            return

        async def go() -> None:
            try:
                raylet = await self._raylet(node)
                raylet.notify("kill_worker", {"worker_id": wid})
            except Exception:  # noqa: BLE001 - its node is gone: so is the worker
                pass

        asyncio.ensure_future(go())

    # --- one actor's creation -----------------------------------------------------------
    def _start(self, aid: bytes) -> None:
        task = self.running.get(aid)
        if task is not None and not task.done():
            return
        self.running[aid] = asyncio.ensure_future(self._run(aid))
        self.running[aid].add_done_callback(lambda t, aid=aid: self._ran(aid, t))

    def _ran(self, aid: bytes, task: asyncio.Task) -> None:
        if self.running.get(aid) is task:
            del self.running[aid]
        if not task.cancelled() and task.exception() is not None:
            log.error("creating actor %s failed: %r", aid.hex(), task.exception())
            self._dead(aid, f"the control store could not create it: {task.exception()!r}")
        actor = self.dir.actors.get(aid)
        if actor is not None and actor["state"] not in (ALIVE, DEAD) and aid in self.specs:
            self._start(aid)  # it was lost again while this run ended

    async def _run(self, aid: bytes) -> None:
        lost = 0
        while True:
            actor = self.dir.actors.get(aid)
            entry = self.specs.get(aid)
            if actor is None or entry is None or actor["state"] in (ALIVE, DEAD):
                return
            spec, bufs, lease_body, via = entry
            incarnation = actor.get("num_restarts", 0)
            spec = dict(spec, rs=incarnation, gc=True)
            try:
                got = await self._lease(aid, lease_body, via)
            except Unschedulable as e:
                self._dead(aid, f"it can never be scheduled: {e}", kind="unschedulable")
                return
            except EnvSetupFailed as e:
                self._dead(aid, f"the runtime_env could not be set up: {e}", kind="env_error")
                return
            except Exception as e:  # noqa: BLE001
                self._dead(aid, f"no worker could be leased for it: {e}")
                return
            if got is None:
                return  # it died meanwhile
            grant, raylet = got
            if self._gone(aid, incarnation):
                raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
                return
            self.creating[aid] = (raylet, grant)
            try:
                reply = await self._construct(grant, spec, bufs)
            except (OSError, asyncio.TimeoutError, wire.ConnectionLost) as e:
                self.creating.pop(aid, None)
                # The new worker died (or its node) during the constructor: again,
                # as long as the actor may restart.
                lost += 1
                if self._gone(aid, incarnation):
                    return
                if lost >= MAX_LOST_CREATIONS or not self.dir.restartable(self.dir.actors.get(aid)):
                    self._dead(aid, f"its worker died while it was being created: {e}")
                    return
                await asyncio.sleep(0.05 * lost)
                continue
            if self.creating.pop(aid, None) is None:
                return  # it died during its constructor: its worker was killed
            body, out = reply if isinstance(reply, tuple) else (reply, [])
            if not body.get("ok"):
                raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
                self._dead(aid, "its constructor raised", error=out)
                return
            if self._gone(aid, incarnation):
                return  # it ended during its constructor (exit_actor() there, say): its worker ends itself
            info = {
                "address": grant["address"], "node_id": grant["node_id"], "worker_id": grant["worker_id"],
                "pid": body.get("pid"), "state": ALIVE, "num_restarts": incarnation,
            }
            self.dir.update(aid, info)
            self._answer(aid, {"ok": True, "actor": self.dir.public(aid)})
            return

    def _gone(self, aid: bytes, incarnation: int) -> bool:
        """Whether the creation under way is no longer wanted (dead, or a newer one runs)."""
        actor = self.dir.actors.get(aid)
        return actor is None or actor["state"] == DEAD or actor.get("num_restarts", 0) != incarnation

    async def _construct(self, grant: dict, spec: dict, bufs: list) -> Any:
        addr = grant["address"]
        target = hostaddr.local_target(addr[5], addr[1], addr[4]) if len(addr) >= 6 else hostaddr.local_target(addr[3], addr[1], addr[2])
        conn = await wire.connect(target, self.token, {}, expect=addr[0])
        try:
            return await conn.request("create_actor", spec, bufs)
        finally:
            conn.close()

    def _dead(self, aid: bytes, cause: str, error: list | None = None, kind: str = "") -> None:
        """Declares ``aid`` dead; ``kind``: ``unschedulable`` or ``env_error`` (the owner's error type)."""
        self._answer(aid, {"ok": False, "cause": cause, "kind": kind}, error or [])
        actor = self.dir.actors.get(aid)
        if actor is not None and actor["state"] != DEAD:
            self.dir.update(aid, {"state": DEAD, "cause": cause})

    def _answer(self, aid: bytes, body: dict, bufs: list | None = None) -> None:
        first = self.first.pop(aid, None)
        if first is not None and not first[0].done():
            first[0].set_result(wire.Reply(body, bufs or []))

    def forget(self, aid: bytes) -> None:
        """The actor is dead: its creation is not kept any more."""
        self.specs.delete(aid)
        first = self.first.get(aid)
        if first is not None and not first[0].done():
            actor = self.dir.actors.get(aid) or {}
            self._answer(aid, {"ok": False, "cause": actor.get("cause") or "it is dead", "kind": ""})

    # --- leases ------------------------------------------------------------------------
    async def _lease(self, aid: bytes, body: dict, via: bytes | None) -> tuple[dict, Any] | None:
        """A grant for ``aid`` (following spillback), or None when the actor died meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_RETRY_S
        body = dict(body, detached=True)  # the control store holds it: not tied to one connection
        node = self._node(via)
        turn = body.get("strategy") in ("SPREAD", "BALANCE")
        owner = self.first.get(aid, (None, None))[1]
        while True:
            if node is None:
                raise RuntimeError("no node daemon is alive")
            raylet = None
            try:
                raylet = await self._raylet(node)
                reply = await self._ask(raylet, body, owner)
                hops = 0
                while "spill" in reply:
                    hops += 1
                    raylet = await self._raylet(reply["spill"])
                    reply = await self._ask(raylet, dict(body, no_spill=hops >= 2 or turn), owner)
                break
            except (OSError, asyncio.TimeoutError, wire.ConnectionLost, wire.RemoteError) as e:
                if (self.dir.actors.get(aid) or {}).get("state") == DEAD:
                    return None
                if loop.time() > deadline:
                    raise
                log.info("lease for actor %s failed (%r); asking again", aid.hex(), e)
                await asyncio.sleep(0.1)
                node = self._node(None)
        if "unschedulable" in reply:
            raise Unschedulable(reply["unschedulable"])
        if "env_error" in reply:
            raise EnvSetupFailed(reply["env_error"])
        if (self.dir.actors.get(aid) or {}).get("state") == DEAD:
            raylet.notify("return_lease", {"lease_id": reply["lease_id"], "kill": True})
            return None
        return reply, raylet

    async def _ask(self, raylet: Any, body: dict, owner: Any) -> dict:
        waiting = self.asking.setdefault(id(raylet), set())
        if owner is not None:
            waiting.add(owner)
        try:
            return await raylet.request("request_lease", body)
        finally:
            waiting.discard(owner)

    def _node(self, node_id: bytes | None) -> dict | None:
        """The node to ask first: ``node_id`` when alive, else a random live one."""
        node = self.nodes.nodes.get(node_id) if node_id else None
        if node is not None and node.get("alive"):
            return node
        alive = [n for n in self.nodes.nodes.values() if n.get("alive")]
        return random.choice(alive) if alive else None

    async def _raylet(self, node: dict) -> Any:
        """A connection to a node daemon (``node``: a node record or a spillback target)."""
        key = (node["ip"], node["port"])
        fut = self.raylets.get(key)
        if fut is None or (fut.done() and (fut.exception() or fut.result().closed)):
            fut = self.raylets[key] = asyncio.ensure_future(self._dial(node))
        return await asyncio.shield(fut)

    async def _dial(self, node: dict) -> Any:
        target = hostaddr.local_target(node.get("uds"), node["ip"], node["port"])
        holder: list = []

        def warning(c: Any, text: str, bufs: list) -> None:
            # An infeasible actor: the owners waiting on this node daemon hear of it.
            for owner in list(self.asking.get(id(holder[0]), ())):
                if owner is not None and not owner.closed:
                    owner.notify("warning", text)

        conn = await wire.connect(target, self.token, {"warning": warning}, expect=node.get("node_id"))
        holder.append(conn)
        conn.on_close.append(lambda c: self.asking.pop(id(c), None))
        return conn

    def close(self) -> None:
        for task in self.running.values():
            task.cancel()
        for fut in self.raylets.values():
            if fut.done() and not fut.exception():
                fut.result().close()
