"""The caller's side of actors: creation, ordered calls, death and kill.

Creation is driven by the process that calls ``Cls.remote()`` (the owner):
it registers the actor (and its name) with the control store, leases a
worker for it like a task (the lease lives as long as the actor), sends the
constructor, and publishes the actor's address.  Other processes that get a
handle look the address up in the control store.

Calls from one process to one actor go over one connection, in the order
they were submitted; a call whose ObjectRef arguments are not ready holds
back the calls behind it.  When the connection drops, the actor's fate is
read from the control store and every call in flight fails with
``ActorDiedError``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

from skate import exceptions as exc
from skate._private import wire
from skate._private.core_worker.errors import EXITED, as_error
from skate._private.core_worker.submitter import (
    TaskRecord,
    complete_returns,
    control_notify,
    resolve_deps,
)

log = logging.getLogger(__name__)

PENDING, ALIVE, DEAD = "PENDING", "ALIVE", "DEAD"


class ActorState:
    """What this process knows of one actor."""

    def __init__(self, actor_id: bytes, class_name: str, owned: bool) -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        self.owned = owned
        self.state = PENDING
        self.conn: wire.Connection | None = None
        self.info: dict = {}
        self.queue: collections.deque[TaskRecord] = collections.deque()
        self.inflight: dict[bytes, TaskRecord] = {}
        self.cause: str = ""
        self.error: BaseException | None = None
        self.resolving = False
        self.lookup_started = False
        self.handles = 0
        self.shared = False
        self.lease: Any = None
        self.detached = False
        self.named = False
        self.exit_when_idle = False
        #: Guards queue/inflight/sending: user threads send directly when
        #: nothing is queued ahead (see ActorManager.try_now).
        self.lock = threading.RLock()


class ActorManager:
    """All actors this process created or called."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.actors: dict[bytes, ActorState] = {}

    def state(self, actor_id: bytes, class_name: str = "", owned: bool = False) -> ActorState:
        st = self.actors.get(actor_id)
        if st is None:
            st = self.actors[actor_id] = ActorState(actor_id, class_name, owned)
        return st

    # --- creation (I/O thread) -------------------------------------------------------
    def create(self, st: ActorState, rec: TaskRecord, cls_bytes: bytes, lease_body: dict) -> None:
        asyncio.ensure_future(self._create(st, rec, cls_bytes, lease_body))

    async def _create(self, st: ActorState, rec: TaskRecord, cls_bytes: bytes, lease_body: dict) -> None:
        core = self.core
        try:
            if rec.deps:
                err = await resolve_deps(core, rec)
                if err is not None:
                    raise err
            grant, raylet = await core.submitter.acquire_lease(lease_body)
            st.lease = (grant, raylet)
            if st.state == DEAD:  # killed while being placed
                raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
                return
            conn = await core.conn_to(grant["address"], exec_=True)
            reply = await conn.request("create_actor", rec.spec, [cls_bytes, *rec.arg_bufs])
        except BaseException as e:  # noqa: BLE001
            self._dead(st, f"the actor could not be created: {e}", e if isinstance(e, exc.RayError) else None)
            return
        body, bufs = reply if isinstance(reply, tuple) else (reply, [])
        rec.keep = None
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
        gcs.notify("update_actor", dict(st.info, actor_id=st.actor_id, state=ALIVE))
        self._connected(st, conn)

    def _connected(self, st: ActorState, conn: wire.Connection) -> None:
        st.conn = conn
        st.state = ALIVE
        conn.on_close.append(lambda c, st=st: self._conn_lost(st, c))
        self._pump(st)

    # --- resolving someone else's actor -----------------------------------------------
    async def _lookup(self, st: ActorState) -> None:
        core = self.core
        try:
            gcs = await core.gcs()
            info = await gcs.request("get_actor", {"actor_id": st.actor_id, "wait": True})
        except Exception as e:  # noqa: BLE001
            self._dead(st, f"its state could not be read from the control store: {e}")
            return
        if info is None:
            self._dead(st, "the control store does not know it")
            return
        if info["state"] != "ALIVE":
            self._dead(st, info.get("cause") or "it is dead")
            return
        st.info = info
        try:
            conn = await core.conn_to(info["address"], exec_=True)
        except Exception as e:  # noqa: BLE001
            self._dead(st, f"its process cannot be reached ({e})")
            return
        self._connected(st, conn)

    # --- calls ------------------------------------------------------------------------
    def submit_threadsafe(self, st: ActorState, rec: TaskRecord) -> None:
        """Submits a call from a user thread, keeping the caller's order.

        With nothing queued ahead and the actor alive, the call is sent from
        this thread; otherwise it joins the queue right now (so a later call
        can never overtake it) and the I/O thread sends it.
        """
        with st.lock:
            state = st.state
            if state == ALIVE and not rec.deps and not st.queue and not st.resolving:
                self._send(st, rec)
                return
            if state != DEAD:
                st.queue.append(rec)
                lookup = not st.owned and not st.lookup_started
                if lookup:
                    st.lookup_started = True
        if state == DEAD:
            self._fail(st, rec)
        elif lookup:
            self.core.post(lambda: asyncio.ensure_future(self._lookup(st)))
        elif state == ALIVE:
            self.core.post(self._pump, st)

    def _send(self, st: ActorState, rec: TaskRecord) -> None:
        st.inflight[rec.spec["t"]] = rec
        conn = st.conn
        self.core.store.set_via(rec.return_ids, conn)
        conn.request_cb(
            "actor_call", rec.spec, rec.arg_bufs, lambda result, err: self._on_reply(st, rec, result, err), threadsafe=True
        )

    def _pump(self, st: ActorState) -> None:
        with st.lock:
            if st.resolving or st.state != ALIVE:
                return
            q = st.queue
            while q:
                rec = q[0]
                if rec.deps:
                    st.resolving = True
                    asyncio.ensure_future(self._resolve(st, rec))
                    return
                q.popleft()
                self._send(st, rec)
            if st.exit_when_idle and not st.inflight:
                st.conn.notify("exit_now", {"graceful": True})

    async def _resolve(self, st: ActorState, rec: TaskRecord) -> None:
        err = await resolve_deps(self.core, rec)
        st.resolving = False
        if err is not None:
            st.queue.remove(rec)
            self.core.submitter.fail(rec, err)
        else:
            rec.deps = None
        self._pump(st)

    def _on_reply(self, st: ActorState, rec: TaskRecord, result: Any, e: BaseException | None) -> None:
        # On the I/O thread, or on a user thread that read the reply itself.
        if e is not None:
            if not isinstance(e, wire.ConnectionLost):
                st.inflight.pop(rec.spec["t"], None)
                self.core.submitter.fail(rec, exc.RaySystemError(f"actor call failed in the runtime: {e}"))
            # ConnectionLost: the call stays in flight; _conn_lost fails it with the actor's cause.
            return
        st.inflight.pop(rec.spec["t"], None)
        body, bufs = result if isinstance(result, tuple) else (result, [])
        if body.get("x"):  # the actor exited (exit_actor): later calls fail here at once

            with st.lock:
                st.state = DEAD
                st.cause = EXITED
        complete_returns(self.core, rec, body, bufs, st.conn)
        if st.exit_when_idle and not st.inflight and not st.queue and st.conn is not None:
            st.conn.notify("exit_now", {"graceful": True})

    def _conn_lost(self, st: ActorState, conn: wire.Connection) -> None:
        if self.core.closing:
            return
        if st.state == DEAD:
            self._fail_all(st)
            return
        asyncio.ensure_future(self._learn_death(st))

    async def _learn_death(self, st: ActorState) -> None:
        cause = "its worker process died unexpectedly"
        try:
            gcs = await self.core.gcs()
            info = await asyncio.wait_for(gcs.request("get_actor", {"actor_id": st.actor_id, "until_dead": True}), 5)
            if info and info.get("cause"):
                cause = info["cause"]
        except Exception:  # noqa: BLE001
            pass
        self._dead(st, cause)

    def _dead(self, st: ActorState, cause: str, error: BaseException | None = None) -> None:
        if st.state != DEAD:
            st.state = DEAD
            st.cause = cause
            st.error = error
            if st.owned:
                asyncio.ensure_future(self._publish_dead(st, cause))
        self._fail_all(st)

    async def _publish_dead(self, st: ActorState, cause: str) -> None:
        try:
            gcs = await self.core.gcs()
            gcs.notify("update_actor", {"actor_id": st.actor_id, "state": DEAD, "cause": cause})
        except Exception:  # noqa: BLE001
            pass

    def _fail_all(self, st: ActorState) -> None:
        with st.lock:
            recs = list(st.inflight.values()) + list(st.queue)
            st.inflight.clear()
            st.queue.clear()
        for rec in recs:
            self._fail(st, rec)

    def _fail(self, st: ActorState, rec: TaskRecord) -> None:
        if isinstance(st.error, exc.ActorUnschedulableError):
            self.core.submitter.fail(rec, st.error)
            return
        msg = f"The actor {st.class_name} ({st.actor_id.hex()}) is dead: {st.cause}"
        self.core.submitter.fail(rec, exc.ActorDiedError(cause=st.error, actor_id=st.actor_id.hex(), error_msg=msg))

    # --- kill and scope -----------------------------------------------------------
    def kill(self, st: ActorState, no_restart: bool = True) -> None:
        """Kills an actor at once (``skate.kill``; any thread): later calls fail right away."""
        with st.lock:
            was = st.state
            st.state = DEAD
            st.cause = "it was killed by skate.kill()"
        self.core.post(lambda: asyncio.ensure_future(self._kill(st, was)))

    async def _kill(self, st: ActorState, was: str) -> None:
        cause = st.cause
        conn = st.conn
        address = st.info.get("address")
        try:
            gcs = await self.core.gcs()
            await gcs.request("update_actor", {"actor_id": st.actor_id, "state": DEAD, "cause": cause})
            if address is None and was != ALIVE and not st.owned:
                info = await gcs.request("get_actor", {"actor_id": st.actor_id})
                address = info.get("address") if info else None
        except Exception:  # noqa: BLE001
            pass
        if address:
            # The control endpoint: the actor may be busy in a call.
            await control_notify(self.core, address, "exit_now", None)
        elif conn is not None and not conn.closed:
            conn.notify("exit_now")
        self._fail_all(st)

    def handle_dropped(self, actor_id: bytes) -> None:
        """The owner's last handle to an anonymous actor went away (I/O thread)."""
        st = self.actors.get(actor_id)
        if st is None or not st.owned or st.shared or st.detached or st.named:
            return
        st.handles -= 1
        if st.handles > 0 or st.state == DEAD:
            return
        st.exit_when_idle = True
        asyncio.ensure_future(self._publish_dead(st, "all references to the actor were removed"))
        if st.state == ALIVE and not st.inflight and not st.queue:
            st.conn.notify("exit_now", {"graceful": True})
