"""Scheduling strategies for ``options(scheduling_strategy=...)``.

Besides these classes, the strings ``"DEFAULT"`` (pack, then spread when the
local node is busy) and ``"SPREAD"`` (round-robin over nodes that fit) are
accepted.
"""

from __future__ import annotations


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
