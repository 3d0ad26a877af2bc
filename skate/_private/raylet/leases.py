"""Leases: lending this node's workers, with resources, to submitters.

::

    request_lease -> LocalScheduler decides: grant (a worker from the pool),
                     spill (ask that node instead), unschedulable, or wait
    lease_blocked / lease_unblocked -> a holder blocked in get() lends its CPUs back
    return_lease  -> the worker goes back to the idle pool (or is killed)
    holder's connection closes -> its leases end and their workers are killed

``LeaseManager`` is one part of ``Raylet`` (see ``server``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

from skate._private import bundle_resources, wire
from skate._private.raylet.scheduler import LeaseRequest
from skate._private.raylet.worker_pool import Worker, tags_of_request
from skate._private.raylet.worker_pool import signal_pid as _kill
from skate._private.runtime_env import packaging, spec
from skate._private.runtime_env.node import NodeEnvs, SetupError, kv_value


@dataclass
class Lease:
    """A worker lent to a submitter together with some resources."""

    lease_id: int
    worker: Worker
    resources: dict
    holder: wire.Connection | None
    actor_id: bytes | None = None
    detached: bool = False
    blocked: int = 0



class LeaseManager:
    """Lease handlers of the node daemon (part of ``Raylet``)."""

    async def on_request_lease(self, conn: wire.Connection, body: dict, bufs: list) -> dict:
        refused = self.group_request_refused(body)  # (a removed placement group's)
        if refused is not None:
            return refused
        resources = body["resources"]
        req = LeaseRequest(
            resources=resources,
            placement=body.get("placement") or resources,
            strategy=body.get("strategy"),
            no_spill=body.get("no_spill", False),
            payload=(conn, body),
        )
        fut = asyncio.get_running_loop().create_future()
        self.waiting[req.id] = fut
        # A requester that goes away takes its queued request with it.
        drop = lambda c, fut=fut: fut.cancel() if not fut.done() else None  # noqa: E731
        conn.on_close.append(drop)
        rq = body.get("rq")
        if rq is not None:  # the requester may withdraw it (cancel_lease_request)
            named = getattr(conn, "lease_rqs", None)
            if named is None:
                named = conn.lease_rqs = {}
            named[rq] = fut
        self.sched.submit(req)
        self._schedule()
        try:
            return await fut
        finally:
            if rq is not None:
                conn.lease_rqs.pop(rq, None)
            self.waiting.pop(req.id, None)
            if not conn.closed:
                conn.on_close.remove(drop)
            if not fut.done() or fut.cancelled():
                self.sched.cancel(req.id)

    def on_cancel_lease_request(self, conn: wire.Connection, rqs: list, bufs: list) -> None:
        """The requester no longer wants these lease requests (its queue for them
        emptied, as Ray's lease requests are cancelled): one still waiting is
        dropped (its requester gets the error "cancelled"); a worker being
        started for one goes to the idle pool."""
        named = getattr(conn, "lease_rqs", {})
        for rq in rqs:
            fut = named.get(rq)
            if fut is not None and not fut.done():
                fut.cancel()

    def _schedule(self) -> None:
        again = True
        while again:
            again = self._schedule_once()

    def _schedule_once(self) -> bool:
        """One pass of decisions; True when resources came back and another pass is due."""
        freed = False
        for decision, req, arg in self.sched.schedule():
            fut = self.waiting.get(req.id)
            conn, body = req.payload
            if decision == "grant":
                if fut is None or fut.done() or conn.closed:
                    # Nobody wants it any more: what it took may fit a request
                    # this pass already left waiting.
                    self.sched.release(req.resources)
                    freed = True
                    continue
                asyncio.ensure_future(self._grant(req, fut))
            elif decision == "spill":
                peer = self.peers[arg]
                if fut is not None and not fut.done():
                    fut.set_result({"spill": {"node_id": arg, "ip": peer["ip"], "port": peer["port"], "uds": peer["uds"]}})
            elif decision == "unschedulable":
                if fut is not None and not fut.done():
                    fut.set_result({"unschedulable": arg})
            elif decision == "infeasible":
                # (a placement group's bundles not reserved yet: pending, not infeasible)
                if not conn.closed and not bundle_resources.groups_in(req.placement):
                    conn.notify(
                        "warning",
                        f"a task or actor needs {req.placement}, but no node in the cluster has "
                        f"that much (this node has {self.resources}); it stays pending until a node "
                        "that fits joins the cluster" + (f" ({arg})" if arg else ""),
                    )
        return freed

    async def _grant(self, req: LeaseRequest, fut: asyncio.Future) -> None:
        conn, body = req.payload
        renv = body.get("runtime_env")
        want = tags_of_request(body, spec.env_hash(renv) if renv else None)
        w = self.pool.take_idle(want)
        setup = None
        if w is None:
            self._make_room()
            if want.env is not None:
                try:
                    setup = await self._node_envs().prepare(renv)
                except SetupError as e:
                    self.sched.release(req.resources)
                    if not fut.done():
                        fut.set_result({"env_error": str(e)})
                    self._schedule()
                    return
        for attempt in range(3):  # a worker killed while it starts is replaced
            if w is not None:
                break
            try:
                w = await self.pool.start(setup, want.env)
            except Exception as e:
                if attempt < 2 and not self.stopping.is_set() and not fut.done():
                    continue
                self.sched.release(req.resources)
                if not fut.done():
                    if setup is not None:  # (its setup hook may have failed)
                        fut.set_result({"env_error": f"the worker for it could not start: {e}"})
                    else:
                        fut.set_exception(e)
                return
        if fut.done() or conn.closed:
            self.sched.release(req.resources)
            w.idle_since = time.monotonic()
            self.pool.idle.append(w)
            self._schedule()
            return
        w.tags.job, w.tags.gpu, w.tags.actor = want.job, want.gpu, want.actor
        lease_id = req.id
        actor_id = body.get("actor_id")
        lease = Lease(lease_id, w, req.resources, conn, actor_id, bool(body.get("detached")))
        w.lease = lease
        w.actor_id = actor_id
        self.leases[lease_id] = lease
        if not lease.detached:
            holder_leases = getattr(conn, "leases", None)
            if holder_leases is None:
                conn.leases = holder_leases = set()
                conn.on_close.append(self._holder_gone)
            holder_leases.add(lease_id)
        self.leases_granted += 1
        fut.set_result(
            {"lease_id": lease_id, "worker_id": w.worker_id, "address": w.address, "node_id": self.node_id, "pid": w.pid}
        )

    def _make_room(self) -> None:
        """With as many idle workers as CPUs and none of them fitting, the oldest goes
        (it would otherwise stay until the idle reaper finds the pool too big)."""
        idle = self.pool.idle
        if idle and len(idle) >= max(int(self.resources.get("CPU", 1)), 1):
            _kill(idle.popleft().pid, signal.SIGTERM)

    def _node_envs(self) -> NodeEnvs:
        envs = getattr(self, "_envs", None)
        if envs is None:
            async def fetch(uri: str) -> bytes | None:
                return kv_value(await self.gcs.request("kv_get", [packaging.KV_NAMESPACE, uri]))

            envs = self._envs = NodeEnvs(os.path.join(self.session_dir, "runtime_resources"), fetch)
        return envs

    def on_return_lease(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.pop(body["lease_id"], None)
        if lease is None:
            return
        holder_leases = getattr(lease.holder, "leases", None)
        if holder_leases:
            holder_leases.discard(lease.lease_id)
        self._release(lease)
        w = lease.worker
        w.lease = None
        if body.get("kill") or lease.actor_id or w.exit_info is not None:
            _kill(w.pid, signal.SIGKILL if body.get("kill") else signal.SIGTERM)
        else:
            w.idle_since = time.monotonic()
            self.pool.idle.append(w)
        self._schedule()

    def _release(self, lease: Lease) -> None:
        if lease.blocked:
            lease.blocked = 0
        else:
            self.sched.release(lease.resources)

    def _holder_gone(self, conn: wire.Connection) -> None:
        for lease_id in list(getattr(conn, "leases", ())):
            lease = self.leases.pop(lease_id, None)
            if lease is None:
                continue
            self._release(lease)
            lease.worker.lease = None
            # The worker may still run work for a holder that is gone: stop it.
            _kill(lease.worker.pid, signal.SIGKILL)
        self._schedule()

    def on_lease_blocked(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.get(body["lease_id"])
        if lease is None:
            return
        lease.blocked += 1
        if lease.blocked == 1:
            self.sched.release(lease.resources)
            self._schedule()

    def on_lease_unblocked(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        lease = self.leases.get(body["lease_id"])
        if lease is None or not lease.blocked:
            return
        lease.blocked -= 1
        if lease.blocked == 0:
            self.sched.acquire(lease.resources)

    def _on_worker_exit(self, w: Worker) -> None:
        lease = w.lease
        if lease is not None:
            self.leases.pop(lease.lease_id, None)
            self._release(lease)
            w.lease = None
            self._schedule()
        if w.actor_id is not None and self.gcs is not None and not self.stopping.is_set():
            self.gcs.notify(
                "update_actor",
                {
                    "actor_id": w.actor_id,
                    "worker_id": w.worker_id,
                    "state": "DEAD",
                    "cause_if_unset": f"the actor's worker process (pid={w.pid}) {w.exit_info['how']}",
                },
            )

    async def on_worker_exit_info(self, conn: wire.Connection, body: dict, bufs: list) -> dict | None:
        worker_id = body["worker_id"]
        w = self.pool.workers.get(worker_id) or self.pool.dead.get(worker_id)
        if w is None:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(w.exited), body.get("timeout", 5.0))
        except asyncio.TimeoutError:
            return None
        return {"how": w.exit_info["how"], "code": w.exit_info["code"], "tail": [ln.decode(errors="replace") for ln in w.tail]}

    def on_kill_worker(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        w = self.pool.workers.get(body["worker_id"])
        if w is None:
            return False
        _kill(w.pid, signal.SIGKILL if body.get("force", True) else signal.SIGTERM)
        return True

