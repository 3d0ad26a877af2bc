"""Placement groups: gangs of resource bundles reserved together (follows Ray's ``ray.util.placement_group``).

A group is reserved atomically by the control store, across nodes as its
strategy says (``PACK``, ``SPREAD``, ``STRICT_PACK``, ``STRICT_SPREAD``).
Tasks and actors then run inside it with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index)``
(or the older ``placement_group=pg`` options), using the bundles' resources
rather than the nodes' free ones.  A group that does not fit now waits (and
shows in ``skate status``); the bundles of a node that dies are placed again
elsewhere; removing a group kills the tasks and actors running in it.
Unless ``lifetime="detached"``, a group is removed when its creator's job
ends.
"""

from __future__ import annotations

from typing import Any

from skate._private import placement, runtime
from skate._private.ids import PlacementGroupID

VALID_PLACEMENT_GROUP_STRATEGIES = {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}


class PlacementGroup:
    """A handle to a placement group (picklable: pass it to tasks and actors)."""

    @staticmethod
    def empty() -> PlacementGroup:
        """The handle of no group."""
        return PlacementGroup(PlacementGroupID.nil())

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @property
    def is_empty(self) -> bool:
        """True for ``PlacementGroup.empty()``."""
        return self.id.is_nil()

    def ready(self) -> Any:
        """An ObjectRef that becomes ready (its value: this handle) once the group is created.

        Works with ``get``, ``wait`` and ``await``.  Getting it raises
        ``RayError`` when the group is removed before it was created.
        """
        core = runtime.current()
        if self.is_empty:
            return core.put(self)
        return placement.ready_ref(core, self)

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """Waits up to ``timeout_seconds`` for the group to be created.

        Returns:
            True once created; False at the timeout (or when it was removed).
        """
        core = runtime.current()
        if placement.created(self.id.binary()):  # (made here: the control store said so)
            return True
        return bool(core.gcs_call(
            "wait_placement_group", {"pg_id": self.id.binary(), "timeout": float(timeout_seconds)},
            timeout=float(timeout_seconds) + 30,
        ))

    @property
    def bundle_specs(self) -> list[dict]:
        """The bundles (resource dicts) the group was created with."""
        if self.bundle_cache is None:
            self.bundle_cache = [] if self.is_empty else placement.bundle_specs(self.id.binary())
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        """The number of bundles."""
        return len(self.bundle_specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()})"

    def __reduce__(self) -> tuple:
        return (PlacementGroup, (self.id, self.bundle_cache))


def validate_placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    lifetime: str | None = None,
    _soft_target_node_id: str | None = None,
    bundle_label_selector: list[dict[str, str]] | None = None,
) -> None:
    """Checks ``placement_group`` arguments like Ray.

    Raises:
        ValueError: bundles not a non-empty list of non-empty resource dicts,
            an unknown strategy or lifetime, or a label selector per bundle missing.
    """
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles)}.")
    if len(bundles) == 0:
        raise ValueError(
            'Bundles must be a non-empty list of resource dictionaries. For example: `[{"CPU": 1.0}, {"GPU": 1.0}]`. '
            "Got empty list instead."
        )
    for bundle in bundles:
        if (
            not isinstance(bundle, dict)
            or not all(isinstance(k, str) for k in bundle)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bundle.values())
        ):
            raise ValueError(
                'Bundles must be a non-empty list of resource dictionaries. For example: `[{"CPU": 1.0}, {"GPU": 1.0}]`.'
            )
        if len(bundle) == 0 or all(v == 0 for v in bundle.values()):
            raise ValueError(f"Bundles cannot be an empty dictionary or resources with only 0 values. Bundles: {bundles}")
        if any(v < 0 for v in bundle.values()):
            raise ValueError(f"Bundle resources cannot be negative. Bundles: {bundles}")
    if bundle_label_selector is not None:
        if len(bundles) != len(bundle_label_selector):
            raise ValueError(
                f"Invalid bundle label selector {bundle_label_selector}. "
                "The length of `bundle_label_selector` should equal the length of `bundles`."
            )
        for sel in bundle_label_selector:
            if not isinstance(sel, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sel.items()):
                raise ValueError(f"Invalid bundle label selector {sel}: a dict of label name to value (str)")
    if strategy not in VALID_PLACEMENT_GROUP_STRATEGIES:
        raise ValueError(
            f"Invalid placement group strategy {strategy}. Supported strategies are: {VALID_PLACEMENT_GROUP_STRATEGIES}."
        )
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` argument must be either `None` or 'detached'. Got {lifetime}.")


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _soft_target_node_id: str | None = None,
    bundle_label_selector: list[dict[str, str]] | None = None,
    fallback_strategy: list[dict] | None = None,
) -> PlacementGroup:
    """Asks for a placement group; returns its handle at once (creation goes on in the background).

    Args:
        bundles: resource dicts, e.g. ``[{"CPU": 1}, {"CPU": 1, "GPU": 1}]``.
        strategy: ``"PACK"`` (as few nodes as possible), ``"SPREAD"`` (as
            many as possible), ``"STRICT_PACK"`` (one node),
            ``"STRICT_SPREAD"`` (one node per bundle).
        name: a name unique in the namespace, for ``get_placement_group``.
        lifetime: None (removed when the creator's job ends) or ``"detached"``.
        bundle_label_selector: one node label selector per bundle.

    Raises:
        ValueError: bad bundles, strategy or lifetime (follows Ray), or a name in use.
        NotImplementedError: for ``_soft_target_node_id`` or ``fallback_strategy``.
    """
    validate_placement_group(bundles, strategy, lifetime, _soft_target_node_id, bundle_label_selector)
    if _soft_target_node_id is not None or fallback_strategy:
        from skate._private.options import not_supported

        raise not_supported(
            "placement_group(_soft_target_node_id=/fallback_strategy=)",
            "placement groups are placed by their strategy and label selectors only",
        )
    core = runtime.current()
    placement.watch_own_groups(core)
    pg_id = PlacementGroupID.from_random()
    body = {
        "pg_id": pg_id.binary(), "bundles": [dict(b) for b in bundles], "strategy": strategy,
        "name": name or "", "namespace": core.namespace, "detached": lifetime == "detached",
        "job_id": core.job_id, "selectors": [dict(s) for s in bundle_label_selector or []],
    }
    if name:
        core.gcs_call("create_placement_group", body)  # (the name may be taken: an error to raise here)
    else:
        placement.tell_gcs(core, "create_placement_group", body)
    return PlacementGroup(pg_id, [dict(b) for b in bundles])


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Removes a group: its resources go back; its tasks and actors are killed (follows Ray)."""
    assert placement_group is not None
    core = runtime.current()
    placement.removed_here(placement_group.id.binary())
    placement.tell_gcs(core, "remove_placement_group", placement_group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The group with this name in the current namespace.

    Raises:
        ValueError: an empty name, or no such group (follows Ray).
    """
    if not placement_group_name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    core = runtime.current()
    rec = core.gcs_call("get_placement_group", {"name": placement_group_name, "namespace": core.namespace})
    if rec is None or rec["state"] == "REMOVED":
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(PlacementGroupID(rec["pg_id"]), [dict(b) for b in rec["bundles"]])


def _table_entry(rec: dict) -> dict:
    return {
        "placement_group_id": rec["pg_id"].hex(),
        "name": rec["name"],
        "bundles": {i: dict(b) for i, b in enumerate(rec["bundles"])},
        "bundles_to_node_id": {i: n.hex() for i, n in enumerate(rec["nodes"]) if n is not None},
        "strategy": rec["strategy"],
        "state": rec["state"],
        "is_detached": rec["detached"],
        "stats": {
            "end_to_end_creation_latency_ms": rec["latency_ms"],
            "scheduling_state": "INFEASIBLE" if rec["infeasible"] else (
                "FINISHED" if rec["state"] == "CREATED" else rec["state"]),
        },
    }


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The state of one group, or of every group by hex id (follows Ray's fields)."""
    core = runtime.current()
    if placement_group is not None:
        rec = core.gcs_call("get_placement_group", {"pg_id": placement_group.id.binary()})
        return _table_entry(rec) if rec is not None else {}
    return {r["pg_id"].hex(): _table_entry(r) for r in core.gcs_call("list_placement_groups")}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the running task or actor uses; None in a driver or outside any group."""
    here = placement.current()
    if here is None:
        return None
    return PlacementGroup(PlacementGroupID(here[0]))
