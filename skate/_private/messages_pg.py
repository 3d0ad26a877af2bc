"""The messages of placement groups (merged into ``messages.REQUESTS``).

Who serves what::

    control store  create_placement_group remove_placement_group wait_placement_group
                   get_placement_group list_placement_groups
    node daemon    prepare_bundles commit_bundles cancel_bundles (from the control store)
    core worker    placement_group_state (to a group's creator: [id, created now])
"""

from __future__ import annotations

from typing import Any, TypedDict, Union

Number = Union[int, float]
Resources = dict[str, Number]


class _CreatePlacementGroupRequired(TypedDict):
    pg_id: bytes  # 18 bytes, chosen by the creator
    bundles: list[Resources]
    strategy: str  # PACK, SPREAD, STRICT_PACK or STRICT_SPREAD


class CreatePlacementGroup(_CreatePlacementGroupRequired, total=False):
    name: str  # "" for none; unique in its namespace
    namespace: Union[str, None]
    detached: bool  # outlives its creator's job
    job_id: Union[int, None]  # the creator's job (the group is removed when it ends)
    selectors: list[dict[str, str]]  # per-bundle node label selectors


class _WaitPlacementGroupRequired(TypedDict):
    pg_id: bytes


class WaitPlacementGroup(_WaitPlacementGroupRequired, total=False):
    timeout: Union[float, None]  # seconds; None: no limit


class GetPlacementGroup(TypedDict, total=False):
    pg_id: bytes  # by id, or
    name: str  # by name in
    namespace: Union[str, None]


class PlacementGroupRecord(TypedDict):
    """A placement group as the control store reports it."""

    pg_id: bytes
    name: str
    namespace: Union[str, None]
    bundles: list[Resources]
    strategy: str
    state: str  # PENDING, CREATED, RESCHEDULING or REMOVED
    nodes: list[Union[bytes, None]]  # the node of each bundle (None: not placed)
    detached: bool
    job_id: Union[int, None]
    infeasible: bool  # no set of live nodes could ever hold the unplaced bundles
    created_at: float  # time.time() of the request
    latency_ms: Union[float, None]  # from request to reservation
    selectors: list[dict[str, str]]


class _PrepareBundlesRequired(TypedDict):
    pg_id: bytes
    bundles: list[tuple[int, Resources]]  # [bundle index, resources]


class PrepareBundles(_PrepareBundlesRequired, total=False):
    commit: bool  # commit at once (every bundle of the group is on this node)


class _CancelBundlesRequired(TypedDict):
    pg_id: bytes


class CancelBundles(_CancelBundlesRequired, total=False):
    indexes: Union[list[int], None]  # None: every bundle of the group here
    removed: bool  # the group is gone: refuse its lease requests from now on


PG_REQUESTS: dict[str, tuple[Any, Any]] = {
    "create_placement_group": (CreatePlacementGroup, bool),
    "remove_placement_group": (bytes, bool),
    "wait_placement_group": (WaitPlacementGroup, bool),
    "get_placement_group": (GetPlacementGroup, Union[PlacementGroupRecord, None]),
    "list_placement_groups": (None, list[PlacementGroupRecord]),
    "prepare_bundles": (PrepareBundles, bool),
    "commit_bundles": (bytes, bool),
    "cancel_bundles": (CancelBundles, bool),
    "placement_group_state": (tuple[bytes, bool], None),
}
