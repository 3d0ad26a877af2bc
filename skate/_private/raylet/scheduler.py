"""Resource accounting and placement decisions for one node (no I/O).

``LocalScheduler`` holds the node's total and available resources and the
queue of lease requests.  Given the cluster view (what every other node has
in total and free) it decides, for each request, one of:

* ``grant``    -- it fits here now: the resources are taken;
  (``BALANCE``, the default for actors: the nodes with room take new
  actors in turn, so actors spread over the cluster when resources allow)
* ``spill``    -- another node should take it (returns that node's id);
* ``wait``     -- it fits this node's total, just not now: stay queued;
* ``infeasible`` -- no node in the cluster has that much: stay queued, warn;
* ``unschedulable`` -- it can never run (pinned to a node that is gone):
  dropped from the queue, the requester gets an error.

The node daemon feeds it events (request, release, block/unblock, cluster
view change) and carries out its decisions.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-9

Resources = dict[str, float]


#: Spillback picks at random among this many nodes with the most free CPU that fit.
SPILL_CHOICES = 3

def fits(need: Resources, have: Resources) -> bool:
    """True when ``have`` covers every amount in ``need``."""
    return all(have.get(k, 0.0) + EPS >= v for k, v in need.items() if v > 0)


def subtract(have: Resources, need: Resources) -> None:
    """Takes ``need`` out of ``have`` in place."""
    for k, v in need.items():
        if v:
            have[k] = have.get(k, 0.0) - v


def add(have: Resources, give: Resources) -> None:
    """Puts ``give`` back into ``have`` in place."""
    for k, v in give.items():
        if v:
            have[k] = have.get(k, 0.0) + v


@dataclass
class LeaseRequest:
    """A request for a worker with some resources."""

    resources: Resources
    #: Resources that must be free to place it (actors: 1 CPU by default).
    placement: Resources
    strategy: Any = None  # None | "SPREAD" | "BALANCE" | ["node", node_id hex, soft]
    no_spill: bool = False
    payload: Any = None
    id: int = field(default_factory=itertools.count(1).__next__)
    warned: bool = False


@dataclass
class NodeView:
    """What the scheduler knows of another node."""

    total: Resources
    available: Resources
    alive: bool = True


class LocalScheduler:
    """Queue and resource accounting for one node."""

    def __init__(self, node_id: bytes, total: Resources) -> None:
        self.node_id = node_id
        self.total = dict(total)
        self.available = dict(total)
        self.queue: deque[LeaseRequest] = deque()
        self.cluster: dict[bytes, NodeView] = {}
        self._spread = itertools.count()

    # --- events -----------------------------------------------------------------
    def submit(self, req: LeaseRequest) -> None:
        """Queues a request; ``schedule`` decides it."""
        self.queue.append(req)

    def cancel(self, req_id: int) -> LeaseRequest | None:
        """Drops a queued request."""
        for req in self.queue:
            if req.id == req_id:
                self.queue.remove(req)
                return req
        return None

    def release(self, resources: Resources) -> None:
        """Returns a finished lease's resources."""
        add(self.available, resources)

    def acquire(self, resources: Resources) -> None:
        """Takes resources back for a lease (after a blocked get), even past zero."""
        subtract(self.available, resources)

    def update_node(self, node_id: bytes, total: Resources, available: Resources, alive: bool) -> None:
        """Records another node's state from the control store."""
        if node_id == self.node_id:
            return
        self.cluster[node_id] = NodeView(dict(total), dict(available), alive)

    # --- decisions --------------------------------------------------------------
    def schedule(self) -> list[tuple[str, LeaseRequest, Any]]:
        """Decides every queued request it can; returns ``(decision, request, arg)``."""
        out: list[tuple[str, LeaseRequest, Any]] = []
        keep: deque[LeaseRequest] = deque()
        while self.queue:
            req = self.queue.popleft()
            decision, arg = self._decide(req)
            if decision == "grant":
                subtract(self.available, req.resources)
                out.append((decision, req, arg))
            elif decision in ("spill", "unschedulable"):
                out.append((decision, req, arg))
            else:
                if decision == "infeasible" and not req.warned:
                    req.warned = True
                    out.append((decision, req, arg))
                keep.append(req)
        self.queue = keep
        return out

    def _decide(self, req: LeaseRequest) -> tuple[str, Any]:
        need = req.placement
        strategy = req.strategy
        if isinstance(strategy, list) and strategy and strategy[0] == "node":
            target = bytes.fromhex(strategy[1])
            if target != self.node_id:
                view = self.cluster.get(target)
                if view is not None and view.alive and not req.no_spill:
                    return "spill", target
                if not strategy[2]:  # hard affinity to a node that is gone
                    return "unschedulable", f"the node it is pinned to ({strategy[1]}) is not alive"
            elif fits(need, self.available):
                return "grant", None
            elif fits(need, self.total):
                return "wait", None
            elif not strategy[2]:  # hard affinity to this node, which can never fit it
                return "unschedulable", f"the node it is pinned to ({strategy[1]}) has {self.total}, never {need}"
        if strategy == "SPREAD" and not req.no_spill:
            candidates = [self.node_id] + [
                n for n, v in self.cluster.items() if v.alive and fits(need, v.total)
            ]
            candidates.sort()
            pick = candidates[next(self._spread) % len(candidates)]
            if pick != self.node_id:
                return "spill", pick
        if strategy == "BALANCE" and not req.no_spill:
            # Actors by default: taken in turn by the nodes that have room now.
            candidates = [self.node_id] if fits(need, self.available) else []
            candidates += [n for n, v in self.cluster.items() if v.alive and fits(need, v.available)]
            if candidates:
                candidates.sort()
                pick = candidates[next(self._spread) % len(candidates)]
                return ("grant", None) if pick == self.node_id else ("spill", pick)
        if fits(need, self.available):
            return "grant", None
        if not req.no_spill:
            # One of the best few, at random: a burst of requests decided on
            # the same (slightly old) view must not all herd onto one node.
            best = [n for n, v in self._others() if fits(need, v.available)][:SPILL_CHOICES]
            if best:
                return "spill", random.choice(best)
        if fits(need, self.total):
            return "wait", None
        if not req.no_spill:
            for node_id, view in self._others():
                if fits(need, view.total):
                    return "spill", node_id
        return "infeasible", None

    def _others(self) -> list[tuple[bytes, NodeView]]:
        return sorted(
            ((n, v) for n, v in self.cluster.items() if v.alive),
            key=lambda nv: -nv[1].available.get("CPU", 0.0),
        )
