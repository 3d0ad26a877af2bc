"""Normal task submission: argument encoding, leases, dispatch, retries.

Tasks with the same resource shape and strategy share a *scheduling key*.
For each key the submitter asks node daemons for worker leases (following
spillback answers to other nodes) and pushes queued tasks straight to the
leased workers, one in flight per worker.  A lease with nothing left to run
lingers for a few milliseconds, so a loop of ``get(f.remote())`` reuses it
instead of paying two daemon round trips per task, then goes back.

Runs on the core worker's I/O thread (what a task is, its spec and
arguments, is built in ``task_spec``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from typing import Any

from skate import exceptions as exc
from skate._private import hostaddr, wire
from skate._private.core_worker import streams, task_events
from skate._private.core_worker.errors import as_error, error_payload
from skate._private.core_worker.memory_store import ERROR, PENDING
from skate._private.core_worker.returns import complete_returns
from skate._private.core_worker.task_spec import TaskRecord, resolve_deps

log = logging.getLogger(__name__)

LINGER_S = 0.005
_ARMING: Any = object()  # Lease.timer while a user thread has the I/O thread set it
MAX_LEASE_REQUESTS = 16
_REQUEST_NUMBERS = itertools.count(1)  # lease requests' numbers (``cancel_lease_request``)


class Lease:
    """A leased worker as the submitter sees it."""

    __slots__ = ("lease_id", "worker_id", "conn", "raylet", "busy", "dead", "timer", "node_id", "key", "pid", "idle_since", "fns", "address")

    def __init__(self, grant: dict, conn: wire.Connection, raylet: wire.Connection, key: Any) -> None:
        self.lease_id = grant["lease_id"]
        self.address = grant["address"]
        self.worker_id = grant["worker_id"]
        self.node_id = grant["node_id"]
        self.pid = grant.get("pid")
        self.conn = conn
        self.raylet = raylet
        self.busy = False
        self.dead = False
        self.timer: asyncio.TimerHandle | None = None
        self.key = key
        self.idle_since = 0.0
        #: Functions this worker already has (sent once per connection).
        fns = getattr(conn, "fns", None)
        if fns is None:
            fns = conn.fns = set()
        self.fns = fns


class KeyState:
    """Queue and leases of one scheduling key."""

    __slots__ = ("queue", "leases", "requests", "waiting", "withdrawn")

    def __init__(self) -> None:
        self.queue: collections.deque[TaskRecord] = collections.deque()
        self.leases: list[Lease] = []
        self.requests = 0
        #: Lease requests out now: their number -> the node daemon that has them.
        self.waiting: dict[int, wire.Connection] = {}
        #: Those of them cancelled (``cancel_lease_request``) as no longer needed.
        self.withdrawn: set[int] = set()

    def request_over(self, rq: int) -> None:
        """Lease request ``rq`` ended: granted, failed or withdrawn (under the submitter's lock)."""
        self.requests -= 1
        self.waiting.pop(rq, None)
        self.withdrawn.discard(rq)


class _Withdrawn(Exception):
    """A lease request this submitter cancelled came back cancelled."""


class TaskSubmitter:
    """Submits normal tasks of one core worker.

    Key states are shared by the I/O thread and user threads (``try_now``
    dispatches straight from the submitting thread when an idle lease is at
    hand), so every change to them happens under ``self.lock``.
    """

    def __init__(self, core: Any) -> None:
        self.core = core
        self.keys: dict[Any, KeyState] = {}
        self.raylets: dict[tuple, asyncio.Future] = {}
        self.closing = False
        self.lock = threading.RLock()
        self._incoming: collections.deque[TaskRecord] = collections.deque()

    # --- submission -------------------------------------------------------------
    def try_now(self, rec: TaskRecord) -> bool:
        """Dispatches from the calling thread if an idle lease fits; False otherwise."""
        with self.lock:
            ks = self.keys.get(rec.key)
            if ks is None or ks.queue or self.closing:
                return False
            for lease in ks.leases:
                if not lease.busy and not lease.dead:
                    self._dispatch(rec, lease)
                    return True
        return False

    def submit_threadsafe(self, rec: TaskRecord) -> None:
        """Hands a task to the I/O thread; one wake-up serves a burst of submissions."""
        inc = self._incoming
        inc.append(rec)
        if len(inc) == 1:
            self.core.post(self._drain)

    def _drain(self) -> None:
        inc = self._incoming
        while inc:
            self.submit(inc.popleft())

    def submit(self, rec: TaskRecord) -> None:
        """Queues a task (I/O thread); resolves its ObjectRef arguments first."""
        if rec.deps:
            asyncio.ensure_future(self._resolve_then_queue(rec))
        else:
            self._queue(rec)

    async def _resolve_then_queue(self, rec: TaskRecord) -> None:
        err = await resolve_deps(self.core, rec)
        if rec.cancelled:
            return
        if err is not None:
            self.fail(rec, err)
            return
        self._queue(rec)

    def _queue(self, rec: TaskRecord) -> None:
        with self.lock:
            ks = self.keys.get(rec.key)
            if ks is None:
                ks = self.keys[rec.key] = KeyState()
            ks.queue.append(rec)
            self._pump(rec.key, ks)

    def _pump(self, key: Any, ks: KeyState) -> None:
        queue = ks.queue
        if not queue:
            return
        for lease in ks.leases:
            if not lease.busy and not lease.dead:
                self._dispatch(queue.popleft(), lease)
                if not queue:
                    return
        want = min(len(queue), MAX_LEASE_REQUESTS) - ks.requests
        rec = queue[0]
        for _ in range(max(want, 0)):
            ks.requests += 1
            asyncio.ensure_future(self._lease_for(key, ks, rec.resources, rec.strategy, rec.renv))

    async def _lease_for(self, key: Any, ks: KeyState, resources: dict, strategy: Any, renv: Any = None) -> None:
        rq = next(_REQUEST_NUMBERS)
        body = {"resources": resources, "strategy": strategy, "job": self.core.job_id, "rq": rq}
        if renv:
            body["runtime_env"] = renv
        try:
            for attempt in range(5):
                grant, raylet = await self.acquire_lease(body, ks)
                try:
                    conn = await self.core.conn_to(grant["address"], exec_=True)
                    break
                except (OSError, wire.ConnectionLost):  # the worker died at once: lease another
                    if attempt == 4 or raylet.closed:
                        raise
                    raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
        except _Withdrawn:
            with self.lock:
                ks.request_over(rq)
                self._pump(key, ks)  # (tasks queued since it was cancelled)
            return
        except Exception as e:  # noqa: BLE001
            with self.lock:
                ks.request_over(rq)
                # A worker whose node daemon just died exits (_raylet_lost): its tasks are not failed.
                lost = self.core.mode == "worker" and self.core.raylet.closed
                failed = list(ks.queue) if not self.closing and not lost else []
                ks.queue.clear()
            if failed:
                # Fail what cannot be placed rather than hang.
                if isinstance(e, exc.RayError):
                    err: exc.RayError = e
                else:
                    log.warning("could not lease a worker: %s", e, exc_info=e)
                    err = exc.RaySystemError(f"could not lease a worker: {e}")
                for rec in failed:
                    self.fail(rec, err)
            return
        lease = Lease(grant, conn, raylet, key)
        with self.lock:
            ks.request_over(rq)  # (granted before its cancel arrived: used all the same)
            if self.closing:
                self._return(lease)
                return
            ks.leases.append(lease)
            if ks.queue:
                self._dispatch(ks.queue.popleft(), lease)
            else:
                self._idle(lease)

    async def acquire_lease(self, body: dict, ks: KeyState) -> tuple[dict, wire.Connection]:
        """Asks the local node daemon for a lease, following spillback; notes in
        ``ks.waiting`` which daemon has the request (number ``body["rq"]``).

        Raises:
            _Withdrawn: the request was cancelled (``withdraw``) meanwhile.
        """
        deadline = time.monotonic() + 60
        rq = body["rq"]
        while True:
            raylet = self.core.raylet
            hops = 0
            try:
                with self.lock:
                    ks.waiting[rq] = raylet
                reply = await raylet.request("request_lease", body)
                while "spill" in reply:
                    hops += 1
                    target = reply["spill"]
                    raylet = await self.raylet_conn(target)
                    # (a node picked by taking turns takes it: no second turn elsewhere)
                    turn = body.get("strategy") in ("SPREAD", "BALANCE")
                    with self.lock:
                        if rq in ks.withdrawn:
                            raise _Withdrawn
                        ks.waiting[rq] = raylet
                    reply = await raylet.request("request_lease", dict(body, no_spill=hops >= 2 or turn))
                break
            except (OSError, wire.ConnectionLost, wire.RemoteError) as e:
                if rq in ks.withdrawn:
                    raise _Withdrawn from None
                # The node we were sent to just died (or dropped the request as
                # it went): once the cluster view has caught up, we go elsewhere.
                if time.monotonic() > deadline or self.core.raylet.closed or (
                        isinstance(e, wire.RemoteError) and str(e) != "cancelled"):
                    raise
                await asyncio.sleep(0.1)
        if "env_error" in reply:
            raise exc.RuntimeEnvSetupError(f"the runtime_env could not be set up: {reply['env_error']}")
        if "unschedulable" in reply:
            cls = exc.ActorUnschedulableError if body.get("actor_id") else exc.TaskUnschedulableError
            raise cls(f"it can never be scheduled: {reply['unschedulable']}")
        return reply, raylet

    async def raylet_conn(self, target: dict) -> wire.Connection:
        key = (target["ip"], target["port"])
        fut = self.raylets.get(key)
        if fut is None or (fut.done() and (fut.exception() or fut.result().closed)):
            addr = hostaddr.local_target(target["uds"], target["ip"], target["port"])
            fut = self.raylets[key] = asyncio.ensure_future(wire.connect(addr, self.core.token, self.core.handlers, expect=target.get("node_id")))
        return await asyncio.shield(fut)

    # --- dispatch (under self.lock) -------------------------------------------
    def _dispatch(self, rec: TaskRecord, lease: Lease) -> None:
        lease.busy = True
        rec.lease = lease
        spec = rec.spec
        spec["l"] = lease.lease_id
        sent = lease.fns
        if rec.fn_id in sent:
            spec["fb"] = 0
            bufs = rec.arg_bufs
        else:
            sent.add(rec.fn_id)
            spec["fb"] = 1
            bufs = [rec.fn_bytes, *rec.arg_bufs]
        conn = lease.conn
        self.core.store.set_via(rec.return_ids, conn)
        conn.request_cb(
            "push_task", spec, bufs, lambda result, err: self._on_reply_any(rec, lease, result, err), threadsafe=True
        )

    def _on_reply_any(self, rec: TaskRecord, lease: Lease, result: Any, e: BaseException | None) -> None:
        """A worker answered: on the I/O thread, or on a user thread that read the reply itself.

        A user thread handles the plain case (results in, next task out);
        failures, exits and retries go to the I/O thread.
        """
        if threading.current_thread() is not self.core.io_thread:
            body = result[0] if isinstance(result, tuple) else result
            if e is not None or body.get("x") or rec.retry_exceptions:
                self.core.post(self._on_reply, rec, lease, result, e)
                return
        self._on_reply(rec, lease, result, e)

    def _on_reply(self, rec: TaskRecord, lease: Lease, result: Any, e: BaseException | None) -> None:
        """A worker answered (I/O thread, or a user thread for plain results: see _on_reply_any)."""
        if e is not None:
            with self.lock:
                lease.busy = False
                lease.dead = True
                ks = self.keys.get(lease.key)
                if ks is not None and lease in ks.leases:
                    ks.leases.remove(lease)
            if isinstance(e, wire.ConnectionLost):
                asyncio.ensure_future(self._worker_died(rec, lease))
            else:
                self.fail(rec, exc.RaySystemError(f"task {rec.name} failed in the worker runtime: {e}"))
                self._return(lease)
            if ks is not None:
                with self.lock:
                    self._pump(lease.key, ks)
            return
        body, bufs = result if isinstance(result, tuple) else (result, [])
        with self.lock:
            lease.busy = False
            ks = self.keys.get(lease.key)
            if body.get("x"):  # the worker exits after this task (max_calls)
                lease.dead = True
                if ks is not None and lease in ks.leases:
                    ks.leases.remove(lease)
                self._return(lease, kill=True)  # never lent to anyone again
        if not self._maybe_retry_exception(rec, body, bufs):
            complete_returns(self.core, rec, body, bufs)
        if ks is None:
            return
        with self.lock:
            if lease.busy:
                return  # a user thread already gave it the next task
            if ks.queue:
                if not lease.dead:
                    self._dispatch(ks.queue.popleft(), lease)
                elif threading.current_thread() is self.core.io_thread:
                    self._pump(lease.key, ks)
                else:  # (the linger timer ended the lease meanwhile) leasing is the loop's
                    self.core.post(self._pump_locked, lease.key, ks)
            elif not lease.dead:
                self._idle(lease)

    def _pump_locked(self, key: Any, ks: KeyState) -> None:
        with self.lock:
            self._pump(key, ks)

    def _maybe_retry_exception(self, rec: TaskRecord, body: dict, bufs: list) -> bool:
        if not rec.retry_exceptions or rec.retries_left == 0 or rec.cancelled:
            return False
        meta = body["r"][0] if body["r"] else None
        if meta is None or meta[0] != ERROR:
            return False
        if isinstance(rec.retry_exceptions, list):
            err = as_error(bufs[0], bufs[1 : meta[1]])
            cause = getattr(err, "cause", err)
            if not any(isinstance(cause, t) for t in rec.retry_exceptions):
                return False
        if rec.retries_left > 0:
            rec.retries_left -= 1
        self._queue(rec)
        return True

    async def _worker_died(self, rec: TaskRecord, lease: Lease) -> None:
        info = None
        try:
            info = await asyncio.wait_for(lease.raylet.request("worker_exit_info", {"worker_id": lease.worker_id}), 10)
        except Exception:  # noqa: BLE001
            pass
        if rec.cancelled:
            self.fail(rec, exc.TaskCancelledError(rec.spec["t"].hex()))
            return
        if rec.retries_left != 0 and not self.closing:
            if rec.retries_left > 0:
                rec.retries_left -= 1
            self._queue(rec)
            return
        how = info["how"] if info else "exited unexpectedly"
        tail = "".join(info["tail"][-10:]) if info and info.get("tail") else ""
        msg = f"The worker (pid={lease.pid}) running task {rec.name} died: it {how}."
        if rec.spec.get("mr", 0) != 0:
            msg += " The task was retried and the retries ran out (max_retries)."
        if tail:
            msg += "\nLast lines of its output:\n" + tail
        self.fail(rec, exc.WorkerCrashedError(msg))

    def fail(self, rec: TaskRecord, err: BaseException) -> None:
        """Completes every return of ``rec`` with ``err`` (a generator task's stream ends with it)."""
        data, bufs = error_payload(err)
        for oid in rec.return_ids:
            self.core.store.complete(oid, ERROR, data, bufs)
        if rec.spec.get("nr", 1) < 0:
            streams.fail(self.core, rec, err)
        rec.keep = None
        if not rec.spec.get("ne"):  # no reply will tell how it ended: its owner does (cancelled, worker died, ...)
            lease, actor = rec.lease, rec.actor
            where = (lease.node_id, lease.worker_id, lease.pid or 0) if lease is not None else task_events.UNKNOWN_WHERE
            name = getattr(rec, "name", None) or rec.spec.get("n", "")
            self.core.task_events.record(
                rec.spec["t"], name, "FAILED", end=task_events.now(), error=(type(err).__name__, str(err)[-8000:]),
                func=name if actor is not None else (rec.func or rec.spec.get("n", "")), where=where,
                actor_id=actor.actor_id if actor is not None else None,
            )

    # --- lease life ---------------------------------------------------------------
    def _idle(self, lease: Lease) -> None:
        """The lease has nothing to run: give it back unless used again soon (under self.lock).

        Its key's queue is empty, so the lease requests it still has out are
        no longer needed: they are cancelled (as Ray does), rather than granted
        later for nothing.
        """
        ks = self.keys.get(lease.key)
        if ks is not None and ks.waiting:
            self._withdraw(ks)
        lease.idle_since = time.monotonic()
        if lease.timer is None:
            if threading.current_thread() is self.core.io_thread:
                lease.timer = self.core.loop.call_later(LINGER_S, self._linger_over, lease)
            else:
                lease.timer = _ARMING
                self.core.post(self._arm_linger, lease)

    def _withdraw(self, ks: KeyState) -> None:
        """Cancels the lease requests ``ks`` has out (under self.lock)."""
        by_daemon: dict[wire.Connection, list[int]] = {}
        for rq, raylet in ks.waiting.items():
            if rq not in ks.withdrawn:
                ks.withdrawn.add(rq)
                by_daemon.setdefault(raylet, []).append(rq)
        for raylet, rqs in by_daemon.items():
            if not raylet.closed:
                raylet.notify("cancel_lease_request", rqs)

    def _arm_linger(self, lease: Lease) -> None:
        with self.lock:
            if lease.timer is _ARMING:
                lease.timer = self.core.loop.call_later(LINGER_S, self._linger_over, lease)

    def _linger_over(self, lease: Lease) -> None:
        with self.lock:
            lease.timer = None
            ks = self.keys.get(lease.key)
            if lease.busy or lease.dead or ks is None:
                return
            left = lease.idle_since + LINGER_S - time.monotonic()
            if left > 0:
                lease.timer = self.core.loop.call_later(left, self._linger_over, lease)
                return
            if ks.queue:
                self._dispatch(ks.queue.popleft(), lease)
                return
            if lease in ks.leases:
                ks.leases.remove(lease)
            lease.dead = True
            self._return(lease)

    def _return(self, lease: Lease, kill: bool = False) -> None:
        if not lease.raylet.closed:
            lease.raylet.notify("return_lease", {"lease_id": lease.lease_id, "kill": kill})

    def _finished(self, rec: TaskRecord) -> bool:
        if rec.spec.get("nr", 1) < 0:  # a generator task: done once its stream ended
            st = self.core.streams.get(rec.spec["t"])
            return st is None or st.total is not None
        store = self.core.store
        return all(store.get(o) is None or store.get(o).state != PENDING for o in rec.return_ids)

    def cancel(self, rec: TaskRecord, force: bool, recursive: bool = True) -> None:
        """Cancels a queued or running task (I/O thread); ``recursive``: its children too."""
        if rec.cancelled or self._finished(rec):
            return
        rec.cancelled = True
        with self.lock:
            ks = self.keys.get(rec.key)
            queued = ks is not None and rec in ks.queue
            if queued:
                ks.queue.remove(rec)
        if queued:
            self.fail(rec, exc.TaskCancelledError(rec.spec["t"].hex()))
            return
        if rec.lease is not None and rec.lease.busy:
            asyncio.ensure_future(control_notify(self.core, rec.lease.address, "cancel_task", {"t": rec.spec["t"], "force": force, "r": recursive}))
            return
        # Still resolving its arguments.
        self.fail(rec, exc.TaskCancelledError(rec.spec["t"].hex()))

    def node_died(self, node: dict) -> None:
        """The control store declared ``node`` dead: its workers and daemon are given up.

        A host that is cut off closes no connection, so without this its
        tasks would wait forever; closing fails them, and they are retried
        on other nodes (``max_retries``) like tasks whose worker died.
        """
        fut = self.raylets.pop((node["ip"], node["port"]), None)
        if fut is not None and fut.done() and not fut.exception():
            fut.result().close()
        with self.lock:
            doomed = [ls for ks in self.keys.values() for ls in ks.leases if ls.node_id == node["node_id"]]
        for lease in doomed:
            lease.raylet.close()
            lease.conn.close()

    def close(self) -> None:
        """Gives every lease back (shutdown)."""
        with self.lock:
            self.closing = True
            for ks in self.keys.values():
                for lease in ks.leases:
                    lease.dead = True
                    # A worker still running our task would go on running it
                    # for nobody: it is killed, not put back in the pool.
                    self._return(lease, kill=lease.busy)
                ks.leases.clear()
        for fut in self.raylets.values():
            if fut.done() and not fut.exception():
                fut.result().close()


async def control_notify(core: Any, address: list, method: str, body: Any) -> None:
    """Sends a one-way message to a worker's control endpoint (not queued behind its work)."""
    try:
        conn = await core.conn_to(address)
        conn.notify(method, body)
    except (OSError, wire.ConnectionLost):
        pass  # the worker is gone
