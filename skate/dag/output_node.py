"""``MultiOutputNode``: a graph with several outputs (follows Ray)."""

from __future__ import annotations

from typing import Any

from skate.dag.dag_node import DAGNode


class MultiOutputNode(DAGNode):
    """Several nodes as the graph's outputs: ``execute()`` returns a list, one result per node.

    Raises:
        ValueError: when ``args`` is not a list or tuple of nodes.
    """

    _cg_kind = "multi"

    def __init__(self, args: list | tuple, other_args_to_resolve: dict | None = None) -> None:
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"MultiOutputNode takes a list or tuple of DAG nodes, not {type(args).__name__}")
        super().__init__(args, {}, {}, other_args_to_resolve)

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        return MultiOutputNode(new_args, new_other_args_to_resolve)

    def _execute_impl(self, *args: Any, **kwargs: Any) -> list:
        return list(self._bound_args)
