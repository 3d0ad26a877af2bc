"""The caller's side of actors: creation, ordered calls, death and kill.

The process that calls ``Cls.remote()`` (the owner) registers the actor
(and its name) with the control store, resolves the constructor's arguments
and hands the creation over: the control store leases a worker, runs the
constructor and restarts the actor when it is lost (see ``actor_lifecycle``
and ``gcs/actor_scheduler``).  The owner and every process that gets a
handle connect to the address the control store gives.

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
from skate._private.core_worker.actor_lifecycle import (
    ALIVE,
    DEAD,
    PENDING,
    RESTARTING,
    ActorLifecycle,
)
from skate._private.core_worker.errors import EXITED, as_error
from skate._private.core_worker.memory_store import ERROR
from skate._private.core_worker.returns import complete_returns
from skate._private.core_worker.submitter import control_notify
from skate._private.core_worker.task_spec import TaskRecord, resolve_deps

log = logging.getLogger(__name__)
#: Why an anonymous actor ended once its last handle anywhere was gone.
DROPPED = "all references to the actor were removed"



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
        self.lease: Any = None
        self.detached = False
        self.named = False
        self.exit_when_idle = False
        # Options every caller applies (from the handle): retries, backpressure.
        self.configured = False
        self.extras: dict = {}
        self.copts: dict = {}
        self.max_task_retries = 0
        self.retry_exceptions: Any = False
        self.max_pending = -1
        self.out_of_order = False
        self.waiting_args = 0  # out-of-order calls whose arguments are being resolved
        self.groups: list[str] = []
        self._mopts: dict[str, tuple] = {}
        # Restarts: the owner re-creates the actor; everyone follows its incarnation.
        self.max_restarts = 0
        self.num_restarts = 0
        self.no_restart = False
        self.creation: tuple | None = None  # (constructor record, class bytes, lease body), owner only, until handed over
        self.reconnecting = False  # the next incarnation is up: calls made now wait for the connection
        self.ctor_deps: Any = None  # ObjectRef arguments of a restartable actor's constructor (owner)
        #: Guards queue/inflight/sending: user threads send directly when
        #: nothing is queued ahead (see ActorManager.try_now).
        self.lock = threading.RLock()


    def configure(self, extras: dict, copts: dict) -> None:
        """Takes the class's call options from the first handle seen here."""
        if self.configured:
            return
        self.configured = True
        self.extras, self.copts = extras, copts
        self.max_task_retries = copts.get("max_task_retries", 0)
        self.retry_exceptions = _norm_retry(copts.get("retry_exceptions", False))
        self.max_pending = copts.get("max_pending_calls", -1)
        if not self.owned:
            self.max_restarts = copts.get("max_restarts", 0)
        self.out_of_order = bool(copts.get("ooo"))
        self.groups = list(copts.get("groups", ()))

    def method_options(self, name: str) -> tuple:
        """``(max_task_retries, retry_exceptions, concurrency_group, task events
        on, call name)`` of calls to ``name`` (worked out once per method)."""
        c = self._mopts.get(name)
        if c is None:
            e = self.extras.get(name, {})
            c = self._mopts[name] = (
                e.get("max_task_retries", self.max_task_retries),
                _norm_retry(e.get("retry_exceptions", self.retry_exceptions)),
                e.get("concurrency_group"),
                e.get("enable_task_events", not self.copts.get("ne")),
                f"{self.class_name}.{name}",
            )
        return c


def _retryable(rec: TaskRecord, body: dict, bufs: list) -> bool:
    """Whether a call's reply is an exception that ``retry_exceptions`` asks to retry."""
    metas = body.get("r") or []
    if not metas or metas[0][0] != ERROR:
        return False
    if rec.retry_exceptions is True:
        return True
    err = as_error(bufs[0], bufs[1 : metas[0][1]])
    cause = getattr(err, "cause", err)
    return any(isinstance(cause, t) for t in rec.retry_exceptions)


def _norm_retry(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else bool(value)


class ActorManager(ActorLifecycle):
    """All actors this process created or called."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.actors: dict[bytes, ActorState] = {}

    def state(self, actor_id: bytes, class_name: str = "", owned: bool = False) -> ActorState:
        st = self.actors.get(actor_id)
        if st is None:
            st = self.actors[actor_id] = ActorState(actor_id, class_name, owned)
        return st

    # --- calls ------------------------------------------------------------------------
    def submit_threadsafe(self, st: ActorState, rec: TaskRecord) -> None:
        """Submits a call from a user thread, keeping the caller's order.

        With nothing queued ahead and the actor alive, the call is sent from
        this thread; otherwise it joins the queue right now (so a later call
        can never overtake it) and the I/O thread sends it.  While a
        restartable actor is being restarted, a call without retries
        (``max_task_retries=0``) fails at once with ``ActorUnavailableError``
        and a call with retries waits for the new incarnation (follows Ray).
        """
        with st.lock:
            state = st.state
            if state == ALIVE and not rec.deps and not st.queue and not st.resolving:
                self._send(st, rec)
                return
            if st.reconnecting and rec.spec["m"] == "__ray_ready__" and not rec.deps:
                self._send(st, rec)  # (the system group needs no exec connection)
                return
            if state == RESTARTING and rec.retries_left == 0 and st.max_restarts != 0 and not st.reconnecting:
                state = "FAST_FAIL"
            elif state != DEAD:
                st.queue.append(rec)
                lookup = not st.owned and not st.lookup_started
                if lookup:
                    st.lookup_started = True
        if state == DEAD:
            self._fail(st, rec)
        elif state == "FAST_FAIL":
            msg = (
                f"The actor {st.class_name} ({st.actor_id.hex()}) is restarting; the call {rec.name} was not sent "
                "because it has no retries (max_task_retries=0). Try again once the actor is back."
            )
            self.core.submitter.fail(rec, exc.ActorUnavailableError(msg, actor_id=st.actor_id.hex()))
        elif lookup:
            self.core.post(lambda: asyncio.ensure_future(self._lookup(st)))
        elif state == ALIVE:
            self.core.post(self._pump, st)

    def _send(self, st: ActorState, rec: TaskRecord) -> None:
        st.inflight[rec.spec["t"]] = rec
        if rec.spec["m"] == "__ray_ready__":
            # The system group: answered by the actor's I/O thread, so a busy
            # actor still says it is ready (its exec endpoint may be running a call).
            self.core.post(lambda: asyncio.ensure_future(self._send_ready(st, rec)))
            return
        conn = st.conn
        self.core.store.set_via(rec.return_ids, conn)
        conn.request_cb(
            "actor_call", rec.spec, rec.arg_bufs, lambda result, err: self._on_reply(st, rec, result, err), threadsafe=True
        )

    async def _send_ready(self, st: ActorState, rec: TaskRecord) -> None:
        address = st.info.get("address")
        try:
            conn = await self.core.conn_to(address)
        except Exception:  # noqa: BLE001 - the actor is gone: losing its exec connection settles the call
            return
        conn.request_cb("actor_ready", rec.spec, [], lambda result, err: self._on_reply(st, rec, result, err), threadsafe=True)

    def send_ready_now(self, st: ActorState) -> None:
        """Sends the queued ``__ray_ready__`` calls at once (the incarnation's address is
        known): the exec connection may wait for a call running in a sync actor."""
        with st.lock:
            ready = [r for r in st.queue if r.spec["m"] == "__ray_ready__" and not r.deps]
            for r in ready:
                st.queue.remove(r)
                self._send(st, r)

    def _pump(self, st: ActorState) -> None:
        with st.lock:
            if st.resolving or st.state != ALIVE:
                return
            q = st.queue
            while q:
                rec = q.popleft()
                if rec.deps:
                    if st.out_of_order:  # later calls need not wait for this one's arguments
                        st.waiting_args += 1
                        asyncio.ensure_future(self._resolve_out_of_order(st, rec))
                        continue
                    q.appendleft(rec)
                    st.resolving = True
                    asyncio.ensure_future(self._resolve(st, rec))
                    return
                self._send(st, rec)
            if st.exit_when_idle and not st.inflight and not st.waiting_args:
                st.conn.notify("exit_now", {"graceful": True, "cause": DROPPED})

    async def _resolve(self, st: ActorState, rec: TaskRecord) -> None:
        err = await resolve_deps(self.core, rec)
        st.resolving = False
        if err is not None:
            st.queue.remove(rec)
            self.core.submitter.fail(rec, err)
        else:
            rec.deps = None
        self._pump(st)

    async def _resolve_out_of_order(self, st: ActorState, rec: TaskRecord) -> None:
        err = await resolve_deps(self.core, rec)
        with st.lock:
            st.waiting_args -= 1
        if err is not None:
            self.core.submitter.fail(rec, err)
            return
        rec.deps = None
        self.submit_threadsafe(st, rec)

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
                st.no_restart = True
        elif rec.retry_exceptions and rec.retries_left != 0 and _retryable(rec, body, bufs):
            if rec.retries_left > 0:
                rec.retries_left -= 1
            self.submit_threadsafe(st, rec)
            return
        complete_returns(self.core, rec, body, bufs, st.conn)
        if st.exit_when_idle and not st.inflight and not st.queue and not st.waiting_args and st.conn is not None:
            st.conn.notify("exit_now", {"graceful": True, "cause": DROPPED})

    # --- kill and scope -----------------------------------------------------------
    def kill(self, st: ActorState, no_restart: bool = True) -> None:
        """Kills an actor at once (``skate.kill``; any thread).

        With ``no_restart`` later calls fail right away; without, the actor's
        process ends and its owner restarts it if it has restarts left.
        """
        if not no_restart:
            self.core.post(lambda: asyncio.ensure_future(self._kill_process(st)))
            return
        with st.lock:
            st.no_restart = True
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
            await gcs.request("update_actor", {"actor_id": st.actor_id, "state": DEAD, "cause": cause, "kill": True})
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

    async def _kill_process(self, st: ActorState) -> None:
        address = st.info.get("address")
        if address is None:
            try:
                gcs = await self.core.gcs()
                info = await gcs.request("get_actor", {"actor_id": st.actor_id})
                address = info.get("address") if info else None
            except Exception:  # noqa: BLE001
                pass
        if address:
            await control_notify(self.core, address, "exit_now", None)

    def handle_dropped(self, actor_id: bytes) -> None:
        """The last handle to an anonymous actor, in any process, went away (I/O thread).

        Handles carry a reference to a small *anchor* object the owner put at
        creation; the ordinary borrowing protocol counts it across processes,
        and the owner calls this when the anchor is freed.
        """
        st = self.actors.get(actor_id)
        if st is None or not st.owned or st.detached or st.named or st.state == DEAD:
            return
        st.exit_when_idle = True
        st.no_restart = True
        if st.state != ALIVE and not st.queue and not st.inflight and not st.waiting_args:
            # Not created yet and nothing to run: it ends now (its worker too, if it has one).
            with st.lock:
                st.state = DEAD
                st.cause = DROPPED
            self.core.post(lambda: asyncio.ensure_future(self._kill(st, PENDING)))
            return
        # Calls already submitted still run: the actor ends (gracefully) once they are done.
        if st.state == ALIVE and not st.inflight and not st.queue and not st.waiting_args:
            st.conn.notify("exit_now", {"graceful": True, "cause": DROPPED})
