"""Placement-group bundles on one node: set aside, committed, given back.

The control store drives it over the node daemon's link to it::

    prepare_bundles {pg_id, bundles, commit} -> the bundles' resources are
        taken from the free ones (False when they do not fit now); with
        ``commit``, committed at once (a group held by one node)
    commit_bundles pg_id -> the node gains the bundle resources
        (``CPU_group_<i>_<id>``, ``CPU_group_<id>``, ``bundle_group_...``,
        see ``bundle_resources``): leases asking for them can be granted
    cancel_bundles {pg_id, indexes?, removed} -> prepared bundles go back to
        the free resources; committed ones too, after the workers leased in
        them are killed; ``removed``: lease requests for the group, queued or
        to come, are answered "unschedulable"

``BundleManager`` is one part of ``Raylet`` (see ``server``).
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from skate._private import bundle_resources as br
from skate._private import wire
from skate._private.raylet.scheduler import EPS, add, fits, subtract
from skate._private.raylet.worker_pool import signal_pid

REMOVED_KEPT = 10_000  # removed group ids remembered, to refuse their late requests


@dataclass
class BundleState:
    """The bundles this node holds, by (group id, bundle index)."""

    prepared: dict[tuple[bytes, int], dict] = field(default_factory=dict)
    committed: dict[tuple[bytes, int], dict] = field(default_factory=dict)
    removed: OrderedDict = field(default_factory=OrderedDict)  # hex id -> None


class BundleManager:
    """Bundle handlers of the node daemon (part of ``Raylet``)."""

    @property
    def bundles(self) -> BundleState:
        st = self.__dict__.get("_bundle_state")
        if st is None:
            st = self.__dict__["_bundle_state"] = BundleState()
        return st

    def bundle_handlers(self) -> dict:
        """The handlers the control store calls on this node."""
        return {
            "prepare_bundles": self._on_prepare_bundles,
            "commit_bundles": self._on_commit_bundles,
            "cancel_bundles": self._on_cancel_bundles,
        }

    def _on_prepare_bundles(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        st, pg_id = self.bundles, body["pg_id"]
        if pg_id.hex() in st.removed:
            return False
        todo = [(i, b) for i, b in body["bundles"] if (pg_id, i) not in st.prepared and (pg_id, i) not in st.committed]
        need = br.merged([b for _, b in todo])
        if not fits(need, self.sched.available):
            return False
        subtract(self.sched.available, need)
        for i, b in todo:
            st.prepared[(pg_id, i)] = b
        if body.get("commit"):
            self._on_commit_bundles(conn, pg_id, bufs)
        return True

    def _on_commit_bundles(self, conn: wire.Connection, pg_id: bytes, bufs: list) -> bool:
        st = self.bundles
        hexid = pg_id.hex()
        for key in [k for k in st.prepared if k[0] == pg_id]:
            b = st.prepared.pop(key)
            st.committed[key] = b
            gained = br.group_resources(hexid, key[1], b)
            add(self.sched.total, gained)
            add(self.sched.available, gained)
        self._schedule()
        return True

    def _on_cancel_bundles(self, conn: wire.Connection, body: dict, bufs: list) -> bool:
        st, pg_id = self.bundles, body["pg_id"]
        hexid = pg_id.hex()
        indexes = body.get("indexes")
        chosen = lambda key: key[0] == pg_id and (indexes is None or key[1] in indexes)  # noqa: E731
        if body.get("removed"):
            st.removed[hexid] = None
            while len(st.removed) > REMOVED_KEPT:
                st.removed.popitem(last=False)
            self._fail_group_requests(hexid)
        for key in [k for k in st.prepared if chosen(k)]:
            add(self.sched.available, st.prepared.pop(key))
        gone = [k for k in st.committed if chosen(k)]
        if gone:
            self._kill_group_leases(hexid)
            for key in gone:
                b = st.committed.pop(key)
                lost = br.group_resources(hexid, key[1], b)
                subtract(self.sched.total, lost)
                subtract(self.sched.available, lost)
                for k in lost:
                    if self.sched.total.get(k, 0.0) <= EPS:
                        self.sched.total.pop(k, None)
                        self.sched.available.pop(k, None)
                add(self.sched.available, b)
        self._schedule()
        return True

    def _kill_group_leases(self, hexid: str) -> None:
        """Ends the leases (tasks and actors) running in the group's bundles here."""
        for lease_id, lease in list(self.leases.items()):
            if hexid not in br.groups_in(lease.resources):
                continue
            del self.leases[lease_id]
            holder_leases = getattr(lease.holder, "leases", None)
            if holder_leases:
                holder_leases.discard(lease_id)
            lease.worker.lease = None
            if lease.actor_id is not None and self.gcs is not None:
                # Said before the worker's exit is: the cause the actor's callers see.
                self.gcs.notify("update_actor", {
                    "actor_id": lease.actor_id, "worker_id": lease.worker.worker_id, "state": "DEAD",
                    "cause_if_unset": f"the actor's {removed_reason(hexid)}",
                })
            signal_pid(lease.worker.pid, signal.SIGKILL)

    def _fail_group_requests(self, hexid: str) -> None:
        for req in list(self.sched.queue):
            if hexid in br.groups_in(req.placement) or hexid in br.groups_in(req.resources):
                self.sched.cancel(req.id)
                fut = self.waiting.get(req.id)
                if fut is not None and not fut.done():
                    fut.set_result({"unschedulable": removed_reason(hexid)})

    def group_request_refused(self, body: Any) -> dict | None:
        """The answer to a lease request for a removed group (None: schedule it as usual)."""
        removed = self.bundles.removed
        if not removed:
            return None
        for res in (body.get("resources") or {}, body.get("placement") or {}):
            for hexid in br.groups_in(res):
                if hexid in removed:
                    return {"unschedulable": removed_reason(hexid)}
        return None


def removed_reason(hexid: str) -> str:
    """Why a request for a removed group can never run."""
    return f"its placement group {hexid} was removed"
