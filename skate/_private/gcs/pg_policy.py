"""Where a placement group's bundles go (no I/O): the four strategies.

``place`` takes the bundles still to place, the strategy, what every live
node has (free resources, or total ones to tell "not now" from "never") and
the nodes already holding the group's other bundles (when a dead node's
bundles are placed again), and answers ``{bundle index: node id}`` or None:

* ``STRICT_PACK``  -- all on one node (the node already holding some, if any);
* ``PACK``         -- on one node when one fits them all, else as few as can;
* ``STRICT_SPREAD`` -- each on a different node;
* ``SPREAD``       -- on different nodes where it can, sharing where it must.

``bundle_label_selector`` entries restrict a bundle to nodes whose labels
match (``{"key": "value"}``, ``"!value"``, ``"in(a,b)"``, ``"!in(a,b)"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EPS = 1e-9

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class NodeRoom:
    """What placement knows of one live node."""

    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


def fits(need: dict[str, float], have: dict[str, float]) -> bool:
    """True when ``have`` covers every amount of ``need``."""
    return all(have.get(k, 0.0) + EPS >= v for k, v in need.items() if v > 0)


def _take(have: dict[str, float], need: dict[str, float]) -> None:
    for k, v in need.items():
        have[k] = have.get(k, 0.0) - v


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """True when node ``labels`` satisfy a label selector (like Ray's syntax)."""
    for key, want in (selector or {}).items():
        have = labels.get(key)
        neg = want.startswith("!")
        expr = want[1:] if neg else want
        if expr.startswith("in(") and expr.endswith(")"):
            ok = have in {v.strip() for v in expr[3:-1].split(",")}
        else:
            ok = have == expr
        if ok == neg:
            return False
    return True


def place(
    bundles: dict[int, dict[str, float]],
    strategy: str,
    nodes: dict[bytes, NodeRoom],
    placed: dict[int, bytes] | None = None,
    selectors: list[dict[str, str]] | None = None,
) -> dict[int, bytes] | None:
    """Chooses a node for each bundle in ``bundles`` (index -> resources), or None when they do not fit.

    Args:
        bundles: the bundles to place now.
        strategy: one of ``STRATEGIES``.
        nodes: the live nodes and their room (free resources, or total ones).
        placed: bundles of the group already held (index -> node), which
            constrain the strict strategies and attract ``PACK``.
        selectors: per-bundle label selectors (by bundle index), or None.
    """
    placed = dict(placed or {})
    keys = {k for b in bundles.values() for k in b}
    room = {n: {k: r.resources.get(k, 0.0) for k in keys | {"CPU"}} for n, r in nodes.items()}

    def allowed(i: int, n: bytes) -> bool:
        sel = selectors[i] if selectors and i < len(selectors) else None
        return matches(sel, nodes[n].labels)

    order = sorted(bundles, key=lambda i: -sum(bundles[i].values()))
    most_free = sorted(room, key=lambda n: (-room[n].get("CPU", 0.0), n))
    if strategy in ("STRICT_PACK", "PACK"):
        used = set(placed.values())
        candidates = list(used) if strategy == "STRICT_PACK" and used else most_free
        need = _sum(list(bundles.values()))
        for n in candidates:
            if n in room and fits(need, room[n]) and all(allowed(i, n) for i in bundles):
                return {i: n for i in bundles}
        if strategy == "STRICT_PACK":
            return None
    out: dict[int, bytes] = {}
    for i in order:
        need = bundles[i]
        taken = list(placed.values()) + list(out.values())
        ok = [n for n in most_free if fits(need, room[n]) and allowed(i, n)]
        if strategy == "STRICT_SPREAD":
            ok = [n for n in ok if n not in taken]
        elif strategy == "SPREAD":
            ok.sort(key=lambda n: taken.count(n))  # stable: fewest of ours first, then most free
        elif strategy == "PACK":
            ok.sort(key=lambda n: 0 if n in taken else 1)
        if not ok:
            return None
        out[i] = ok[0]
        _take(room[ok[0]], need)
    return out
