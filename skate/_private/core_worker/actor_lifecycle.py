"""An actor's life as its callers see it: creation, loss, restart, death.

``ActorLifecycle`` is one part of ``ActorManager`` (see ``actors``); it runs
on the core worker's I/O thread.

::

    owner:   create --lease, create_actor--> ALIVE --connection lost--+
                 ^                                                     |
                 |        restarts left and the end was not wanted     v
                 +--- RESTARTING (control store told; in-flight calls  decide
                      with retries left go back to the queue's front)  |
                                                                       v
                                                        DEAD (cause; calls fail)

    others:  look the actor up (bounded waits) --> ALIVE --connection lost-->
             wait for the owner to publish the next incarnation, or DEAD

The owner restarts the actor (``max_restarts``, -1 = forever): it leases a
new worker and runs the constructor again (``was_current_actor_reconstructed``
is then true in the actor).  A call in flight when the actor was lost is sent
again if it has retries left (``max_task_retries``), else it fails with
``ActorUnavailableError`` (the actor comes back) or ``ActorDiedError`` (it is
gone).  Calls made meanwhile wait in the queue and keep each caller's order.
The end is wanted (no restart) after ``exit_actor``, ``__ray_terminate__``,
``kill(no_restart=True)`` or when every handle is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from skate import exceptions as exc
from skate._private import wire
from skate._private.core_worker.errors import as_error
from skate._private.core_worker.submitter import TaskRecord, resolve_deps

log = logging.getLogger(__name__)

PENDING, ALIVE, RESTARTING, DEAD = "PENDING", "ALIVE", "RESTARTING", "DEAD"
#: How long one control-store lookup may wait for an actor's next state (s); callers ask again.
LOOKUP_WAIT_S = 30.0
#: How long a driver's shutdown waits for its actors' graceful ends (s).
SHUTDOWN_GRACE_S = 2.0


def _worker_exit_cause(info: dict) -> bool:
    """Whether a DEAD record's cause is a worker's unexpected exit seen by its node (not an intended end)."""
    return (info.get("cause") or "").startswith("the actor's worker process")


class ActorLifecycle:
    """Creation, restarts and death of actors (a part of ``ActorManager``)."""

    core: Any
    actors: dict

    # --- creation (I/O thread) -------------------------------------------------------
    def create(self, st: Any, rec: TaskRecord, cls_bytes: bytes, lease_body: dict) -> None:
        st.creation = (rec, cls_bytes, lease_body)
        asyncio.ensure_future(self._create(st))

    async def _create(self, st: Any) -> None:
        core = self.core
        rec, cls_bytes, lease_body = st.creation
        raylet = grant = None
        try:
            if rec.deps:
                err = await resolve_deps(core, rec)
                if err is not None:
                    raise err
                rec.deps = None
            grant, raylet = await core.submitter.acquire_lease(lease_body)
            st.lease = (grant, raylet)
            if st.state == DEAD:  # killed while being placed
                raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
                return
            conn = await core.conn_to(grant["address"], exec_=True)
            reply = await conn.request("create_actor", rec.spec, [cls_bytes, *rec.arg_bufs])
        except (OSError, wire.ConnectionLost) as e:
            if st.num_restarts and self._can_restart(st) and st.state != DEAD:
                # The new worker died during its constructor: try again.
                await self._restart(st)
                return
            self._dead(st, f"the actor could not be created: {e}")
            return
        except BaseException as e:  # noqa: BLE001
            self._dead(st, f"the actor could not be created: {e}", e if isinstance(e, exc.RayError) else None)
            return
        body, bufs = reply if isinstance(reply, tuple) else (reply, [])
        if st.max_restarts == 0:
            rec.keep = None  # (a restartable actor keeps its constructor's arguments)
        if not body.get("ok"):
            err = as_error(bufs[0], bufs[1:])
            raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
            self._dead(st, f"its constructor raised:\n{err}", err)
            return
        st.info = {"address": grant["address"], "node_id": grant["node_id"], "worker_id": grant["worker_id"], "pid": body.get("pid")}
        if st.state == DEAD:
            conn.notify("exit_now")
            return
        gcs = await core.gcs()
        gcs.notify("update_actor", dict(st.info, actor_id=st.actor_id, state=ALIVE, num_restarts=st.num_restarts))
        self._connected(st, conn)

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
        st.info = info
        if st.num_restarts < info.get("num_restarts", 0):
            st.num_restarts = info.get("num_restarts", 0)
            self._requeue_inflight(st)
        try:
            conn = await core.conn_to(info["address"], exec_=True)
        except Exception:  # noqa: BLE001 - it died again meanwhile: wait for the next one
            await self._lookup(st, st.num_restarts + 1)
            return
        self._connected(st, conn)

    # --- loss, restart, death -------------------------------------------------------------
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

    def _can_restart(self, st: Any) -> bool:
        return not st.no_restart and (st.max_restarts == -1 or st.num_restarts < st.max_restarts)

    async def _after_loss(self, st: Any) -> None:
        if not st.owned:
            await self._lookup(st, st.num_restarts + 1)
            return
        info = None
        try:
            gcs = await self.core.gcs()
            info = await asyncio.wait_for(gcs.request("get_actor", {"actor_id": st.actor_id}), 5)
        except Exception:  # noqa: BLE001
            pass
        wanted = info is not None and info.get("state") == DEAD and bool(info.get("cause")) and st.no_restart is False
        if not self._can_restart(st):
            await self._learn_death(st, info, spent=bool(st.max_restarts) and not st.no_restart)
            return
        if wanted and not _worker_exit_cause(info):
            await self._learn_death(st, info)
            return
        await self._restart(st)

    async def _restart(self, st: Any) -> None:
        st.num_restarts += 1
        self._requeue_inflight(st)
        try:
            gcs = await self.core.gcs()
            gcs.notify("update_actor", {"actor_id": st.actor_id, "state": RESTARTING, "num_restarts": st.num_restarts})
        except Exception:  # noqa: BLE001
            pass
        rec = st.creation[0]
        rec.spec["rs"] = st.num_restarts
        log.info("restarting actor %s (restart %d)", st.class_name, st.num_restarts)
        await self._create(st)

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

    async def _learn_death(self, st: Any, info: dict | None = None, spent: bool = False) -> None:
        cause = (info or {}).get("cause") if info and info.get("state") == DEAD else None
        if not cause:
            cause = "its worker process died unexpectedly"
            try:
                gcs = await self.core.gcs()
                info = await asyncio.wait_for(gcs.request("get_actor", {"actor_id": st.actor_id, "until_dead": True}), 5)
                if info and info.get("cause"):
                    cause = info["cause"]
            except Exception:  # noqa: BLE001
                pass
        if spent:
            cause += f" (it had been restarted {st.num_restarts} time(s): its max_restarts is spent)"
        self._dead(st, cause)

    def _dead(self, st: Any, cause: str, error: BaseException | None = None) -> None:
        if st.state != DEAD:
            with st.lock:
                st.state = DEAD
            st.cause = cause
            st.error = error
            if st.owned:
                asyncio.ensure_future(self._publish_dead(st, cause))
        st.creation = None
        self._fail_all(st)

    async def _publish_dead(self, st: Any, cause: str) -> None:
        try:
            gcs = await self.core.gcs()
            gcs.notify("update_actor", {"actor_id": st.actor_id, "state": DEAD, "cause": cause})
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
            conn.notify("exit_now", {"graceful": True})
            waits.append(fut)
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_GRACE_S)
