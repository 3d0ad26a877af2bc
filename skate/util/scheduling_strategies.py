"""Scheduling strategies for ``options(scheduling_strategy=...)``.

Besides these classes, the strings ``"DEFAULT"`` (pack, then spread when the
local node is busy) and ``"SPREAD"`` (round-robin over nodes that fit) are
accepted.
"""

from __future__ import annotations

from typing import Any


class NodeAffinitySchedulingStrategy:
    """Runs a task or actor on one node.

    Args:
        node_id: The node's id (hex, as in ``nodes()`` or ``get_node_id()``).
        soft: When True and the node is gone or cannot fit the request, run
            elsewhere instead of failing to schedule.
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False) -> None:
        if _spill_on_unavailable or _fail_on_unavailable:
            raise NotImplementedError(
                "skate does not support _spill_on_unavailable/_fail_on_unavailable yet: a soft affinity "
                "runs elsewhere when the node is gone or cannot fit the request, a hard one waits or fails."
            )
        self.node_id = node_id
        self.soft = soft

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Runs a task or actor in a placement group (follows Ray).

    Args:
        placement_group: The group (a ``PlacementGroup``), or None for none.
        placement_group_bundle_index: The bundle to use; -1: any bundle.
        placement_group_capture_child_tasks: Whether the tasks and actors it
            starts run in the same group by default; None: as its parent does.
    """

    def __init__(
        self,
        placement_group: Any,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy(placement_group={self.placement_group!r}, "
            f"placement_group_bundle_index={self.placement_group_bundle_index}, "
            f"placement_group_capture_child_tasks={self.placement_group_capture_child_tasks})"
        )
