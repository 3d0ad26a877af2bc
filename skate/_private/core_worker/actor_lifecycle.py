"""An actor's life as its callers see it: creation, loss, restart, death.

``ActorLifecycle`` is one part of ``ActorManager`` (see ``actors``); it runs
on the core worker's I/O thread.

::

    owner:   resolve the constructor's arguments --schedule_actor--> the
             control store leases a worker and creates the actor; its reply
             (the first incarnation's address) --> connect --> ALIVE
    everyone: connection lost --> RESTARTING (calls queue) --> look the
             actor up (bounded waits) --> the next incarnation, ALIVE: in-flight
             calls with retries go first again --> or DEAD (cause; calls fail)

The control store restarts the actor (``max_restarts``, -1 = forever): it
leases a new worker and runs the constructor again
(``was_current_actor_reconstructed`` is then true in the actor).  A call in
flight when the actor was lost is sent again if it has retries left
(``max_task_retries``), else it fails with ``ActorUnavailableError`` (the
actor came back) or ``ActorDiedError`` (it is gone).  Calls made meanwhile
wait in the queue and keep each caller's order.  The end is wanted (no
restart) after ``exit_actor``, ``__ray_terminate__``, ``kill(no_restart=True)``
or when every handle is gone: whoever ends it tells the control store first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from skate import exceptions as exc
from skate._private import wire
from skate._private.core_worker.errors import as_error
from skate._private.core_worker.task_spec import TaskRecord, resolve_deps

log = logging.getLogger(__name__)

PENDING, ALIVE, RESTARTING, DEAD = "PENDING", "ALIVE", "RESTARTING", "DEAD"
#: How long one control-store lookup may wait for an actor's next state (s); callers ask again.
LOOKUP_WAIT_S = 30.0
#: How long a driver's shutdown waits for its actors' graceful ends (s).
SHUTDOWN_GRACE_S = 2.0


class ActorLifecycle:
    """Creation, restarts and death of actors (a part of ``ActorManager``)."""

    core: Any
    actors: dict

    # --- creation (I/O thread) -------------------------------------------------------
    def create(self, st: Any, rec: TaskRecord, cls_bytes: bytes, lease_body: dict, register: tuple | None = None) -> None:
        """Creates the actor ``st``; ``register``: ``(record, handle metadata)`` to register it with
        first (an anonymous actor: registered without waiting for the answer)."""
        st.creation = (rec, cls_bytes, lease_body)
        asyncio.ensure_future(self._create(st, register))

    async def _create(self, st: Any, register: tuple | None = None) -> None:
        """Resolves the constructor's arguments and hands the creation to the control store."""
        core = self.core
        rec, cls_bytes, lease_body = st.creation
        try:
            if register is not None:
                (await core.gcs()).notify("register_actor", register[0], [register[1]])
            if rec.deps:
                err = await resolve_deps(core, rec)
                if err is not None:
                    raise err
                if st.max_restarts:
                    st.ctor_deps = rec.deps  # (kept for restarts, with the arguments)
                rec.deps = None
            if st.state == DEAD:  # killed before it was handed over
                return
            gcs = await core.gcs()
            body = {"actor_id": st.actor_id, "spec": rec.spec, "lease": lease_body, "via": core.node_id}
            try:
                reply = await gcs.request("schedule_actor", body, [cls_bytes, *rec.arg_bufs])
            except (OSError, wire.ConnectionLost):
                # The control store went away with the creation handed over: a
                # durable one carries it on after its restart; follow the actor.
                reply = None
        except BaseException as e:  # noqa: BLE001
            self._dead(st, f"the actor could not be created: {e}", e if isinstance(e, exc.RayError) else None)
            return
        finally:
            rec.arg_bufs = rec.base_bufs = None  # the control store keeps them
            st.creation = None
        if reply is None:
            await self._lookup(st)
            return
        body, bufs = reply if isinstance(reply, tuple) else (reply, [])
        if not body.get("ok"):
            err: BaseException | None = None
            if bufs:
                err = as_error(bufs[0], bufs[1:])
                cause = f"its constructor raised:\n{err}"
            else:
                cause = body.get("cause") or "it could not be created"
                if body.get("kind") == "unschedulable":
                    err = exc.ActorUnschedulableError(cause)
                elif body.get("kind") == "env_error":
                    err = exc.RuntimeEnvSetupError(cause)
            self._dead(st, cause, err, publish=False)
            return
        await self._follow(st, body["actor"], 0)

    def _connected(self, st: Any, conn: wire.Connection) -> None:
        with st.lock:
            if st.state == DEAD:
                return
            st.conn = conn
            st.state = ALIVE
        conn.on_close.append(lambda c, st=st: self._conn_lost(st, c))
        if conn.closed:
            self._conn_lost(st, conn)
            return
        self._pump(st)

    # --- resolving someone else's actor -----------------------------------------------
    async def _lookup(self, st: Any, min_restarts: int = 0) -> None:
        """Finds the actor's current incarnation (at least ``min_restarts``) and connects."""
        core = self.core
        while True:
            try:
                gcs = await core.gcs()
                info = await gcs.request(
                    "get_actor", {"actor_id": st.actor_id, "wait": True, "min_restarts": min_restarts, "timeout": LOOKUP_WAIT_S}
                )
            except Exception as e:  # noqa: BLE001
                self._dead(st, f"its state could not be read from the control store: {e}")
                return
            if info is None:
                self._dead(st, "the control store does not know it")
                return
            if info["state"] == "DEAD":
                self._dead(st, info.get("cause") or "it is dead")
                return
            if info["state"] == "ALIVE" and info.get("num_restarts", 0) >= min_restarts:
                break
            if st.state == DEAD:
                return
        await self._follow(st, info, min_restarts)

    async def _follow(self, st: Any, info: dict, min_restarts: int) -> None:
        """Connects to the incarnation ``info`` describes (ALIVE)."""
        core = self.core
        if st.state == DEAD:
            return
        st.info = info
        if st.num_restarts < info.get("num_restarts", 0):
            st.num_restarts = info.get("num_restarts", 0)
            self._requeue_inflight(st)
        st.reconnecting = True
        self.send_ready_now(st)
        try:
            conn = await core.conn_to(info["address"], exec_=True)
        except Exception:  # noqa: BLE001 - it died again meanwhile: wait for the next one
            st.reconnecting = False
            await self._lookup(st, st.num_restarts + 1)
            return
        st.reconnecting = False
        self._connected(st, conn)

    # --- loss, restart, death -------------------------------------------------------------
    def node_died(self, node_id: bytes) -> None:
        """The control store declared ``node_id`` dead (I/O thread): the
        connections to the actors there are closed, since a host that is cut
        off closes none itself; their calls then follow the actor's restart
        elsewhere, or fail with its death, as after a crash."""
        for st in list(self.actors.values()):
            conn = st.conn
            if conn is not None and st.info.get("node_id") == node_id:
                conn.close()

    def _conn_lost(self, st: Any, conn: wire.Connection) -> None:
        if self.core.closing:
            return
        with st.lock:
            if conn is not st.conn:
                return
            st.conn = None
            dead = st.state == DEAD
            if not dead:
                st.state = RESTARTING  # calls queue until we know what happened
        if dead:
            self._fail_all(st)
            return
        asyncio.ensure_future(self._after_loss(st))

    async def _after_loss(self, st: Any) -> None:
        # The control store restarts the actor (or declares it dead): follow it.
        await self._lookup(st, st.num_restarts + 1)

    def _requeue_inflight(self, st: Any) -> None:
        """Calls lost with the old incarnation: those with retries left go first again, in order."""
        with st.lock:
            recs = list(st.inflight.values())
            st.inflight.clear()
            again = [r for r in recs if r.retries_left != 0]
            lost = [r for r in recs if r.retries_left == 0]
            for r in again:
                if r.retries_left > 0:
                    r.retries_left -= 1
            st.queue.extendleft(reversed(again))
        msg = (
            f"The actor {st.class_name} ({st.actor_id.hex()}) was lost while running this call and is being "
            "restarted; the call had no retries left (max_task_retries), so it may or may not have run."
        )
        for r in lost:
            self.core.submitter.fail(r, exc.ActorUnavailableError(msg, actor_id=st.actor_id.hex()))

    def _dead(self, st: Any, cause: str, error: BaseException | None = None, publish: bool = True) -> None:
        if st.state != DEAD:
            with st.lock:
                st.state = DEAD
            st.cause = cause
            st.error = error
            if st.owned and publish:
                asyncio.ensure_future(self._publish_dead(st, cause))
        st.creation = None
        self._fail_all(st)

    async def _publish_dead(self, st: Any, cause: str) -> None:
        try:
            gcs = await self.core.gcs()
            await gcs.request("update_actor", {"actor_id": st.actor_id, "state": DEAD, "cause": cause})
        except Exception:  # noqa: BLE001
            pass

    def _fail_all(self, st: Any) -> None:
        with st.lock:
            recs = list(st.inflight.values()) + list(st.queue)
            st.inflight.clear()
            st.queue.clear()
        for rec in recs:
            self._fail(st, rec)

    def _fail(self, st: Any, rec: TaskRecord) -> None:
        if isinstance(st.error, exc.ActorUnschedulableError):
            self.core.submitter.fail(rec, st.error)
            return
        msg = f"The actor {st.class_name} ({st.actor_id.hex()}) is dead: {st.cause}"
        self.core.submitter.fail(rec, exc.ActorDiedError(cause=st.error, actor_id=st.actor_id.hex(), error_msg=msg))

    # --- shutdown -------------------------------------------------------------------
    async def close(self) -> None:
        """Ends this process's own actors gracefully (their ``__ray_shutdown__`` and
        ``atexit`` handlers run), waiting up to ``SHUTDOWN_GRACE_S`` for them."""
        waits = []
        for st in list(self.actors.values()):
            conn = st.conn
            if not st.owned or st.detached or st.state != ALIVE or conn is None or conn.closed:
                continue
            fut = asyncio.get_running_loop().create_future()
            conn.on_close.append(lambda c, f=fut: f.done() or f.set_result(None))
            conn.notify("exit_now", {"graceful": True, "cause": "its owner shut down"})
            waits.append(fut)
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_GRACE_S)
