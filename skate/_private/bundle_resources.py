"""Names of the resources a placement group's bundles add to a node (no I/O).

A node holding bundle ``i`` of group ``G`` (hex id) gains, for each resource
``R`` of the bundle, ``R_group_i_G`` (that bundle's) and ``R_group_G`` (the
group's, summed over the bundles the node holds), plus the markers
``bundle_group_i_G`` and ``bundle_group_G`` (1000 per bundle), like Ray.  A
task or actor placed in bundle ``i`` asks for ``R_group_i_G`` and
``R_group_G`` instead of ``R``; placed in any bundle (index -1), for
``R_group_G`` only; and for 0.001 of the matching markers, so that one that
asks for nothing still lands on a node holding the group.
"""

from __future__ import annotations

import re

BUNDLE = "bundle"
BUNDLE_UNITS = 1000.0
MARKER_REQUEST = 0.001

_NAME = re.compile(r"^(.+)_group_(?:(\d+)_)?([0-9a-f]{36})$")


def group_resources(pg_hex: str, index: int, bundle: dict[str, float]) -> dict[str, float]:
    """What a node gains while it holds bundle ``index`` of group ``pg_hex``."""
    out: dict[str, float] = {}
    for k, v in bundle.items():
        if v > 0:
            out[f"{k}_group_{index}_{pg_hex}"] = float(v)
            out[f"{k}_group_{pg_hex}"] = float(v)
    out[f"{BUNDLE}_group_{index}_{pg_hex}"] = BUNDLE_UNITS
    out[f"{BUNDLE}_group_{pg_hex}"] = BUNDLE_UNITS
    return out


def merged(parts: list[dict[str, float]]) -> dict[str, float]:
    """The sum of several resource maps."""
    out: dict[str, float] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def request_in_group(resources: dict[str, float], pg_hex: str, index: int) -> dict[str, float]:
    """What a task or actor asking for ``resources`` asks for inside bundle ``index`` (-1: any)."""
    out: dict[str, float] = {}
    for k, v in resources.items():
        if v > 0:
            out[f"{k}_group_{pg_hex}"] = float(v)
            if index >= 0:
                out[f"{k}_group_{index}_{pg_hex}"] = float(v)
    out[f"{BUNDLE}_group_{pg_hex}"] = MARKER_REQUEST
    if index >= 0:
        out[f"{BUNDLE}_group_{index}_{pg_hex}"] = MARKER_REQUEST
    return out


def group_of(resource: str) -> str | None:
    """The group (hex id) a resource name belongs to, or None for an ordinary resource."""
    m = _NAME.match(resource)
    return m.group(3) if m else None


def groups_in(resources: dict[str, float]) -> set[str]:
    """The groups (hex ids) whose resources appear in ``resources``."""
    out = set()
    for k in resources:
        if "_group_" in k:
            g = group_of(k)
            if g is not None:
                out.add(g)
    return out
