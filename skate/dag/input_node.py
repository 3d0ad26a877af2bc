"""The graph's input: ``InputNode`` and the parts of it ``InputAttributeNode`` picks (follows Ray)."""

from __future__ import annotations

from typing import Any

from skate.dag.dag_input import DAGInputData, input_value, pick
from skate.dag.dag_node import DAGNode

__all__ = ["DAGInputData", "InputAttributeNode", "InputNode", "input_value", "pick"]

IN_CONTEXT_MANAGER = "__in_context_manager__"


class InputNode(DAGNode):
    """The input of a graph: what ``execute(*args, **kwargs)`` is given (follows Ray).

    Use it as a context manager, once per graph::

        with InputNode() as inp:
            dag = model.forward.bind(inp)      # the whole input
            dag2 = combine.bind(inp[0], inp.x)  # parts of it

    With one argument and no keywords the node stands for that argument;
    otherwise ``inp[i]`` picks a positional argument and ``inp.key`` /
    ``inp["key"]`` a keyword argument (or an item/attribute of a single
    argument).

    Raises:
        ValueError: when given arguments (input comes from ``execute``).
    """

    _cg_kind = "input"

    def __init__(self, *args: Any, input_type: Any = None, _other_args_to_resolve: dict | None = None, **kwargs: Any) -> None:
        if args or kwargs:
            raise ValueError("InputNode should not take any args or kwargs.")
        self.input_attribute_nodes: dict = {}
        self.input_type = input_type
        super().__init__([], {}, {}, _other_args_to_resolve)

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        return InputNode(_other_args_to_resolve=new_other_args_to_resolve)

    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        if not self._bound_other_args_to_resolve.get(IN_CONTEXT_MANAGER):
            raise AssertionError(
                "InputNode is a singleton instance that should be only used in context manager for dag "
                "building and execution. See the docstring of class InputNode for examples."
            )
        return input_value(args, kwargs)

    def __enter__(self) -> InputNode:
        self._bound_other_args_to_resolve[IN_CONTEXT_MANAGER] = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key in ("bind", "remote"):
            return super().__getattr__(key)
        return self._attribute(key, "__getattr__")

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        if not isinstance(key, (int, str)):
            raise TypeError("Please only use int index or str as first-level key to access fields of dag input.")
        return self._attribute(key, "__getitem__")

    def _attribute(self, key: int | str, accessor: str) -> InputAttributeNode:
        nodes = self.__dict__.setdefault("input_attribute_nodes", {})
        node = nodes.get((key, accessor))
        if node is None:
            node = nodes[(key, accessor)] = InputAttributeNode(self, key, accessor)
        return node


class InputAttributeNode(DAGNode):
    """One part of the graph's input: ``inp[0]``, ``inp.key`` or ``inp["key"]`` (follows Ray)."""

    _cg_kind = "input_attr"

    def __init__(self, dag_input_node: Any, key: int | str, accessor_method: str, input_type: str | None = None) -> None:
        self._dag_input_node = dag_input_node
        self._key = key
        self._accessor_method = accessor_method
        super().__init__(
            [], {}, {},
            {"dag_input_node": dag_input_node, "key": key, "accessor_method": accessor_method, "result_type_string": input_type},
        )

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        o = new_other_args_to_resolve
        return InputAttributeNode(o["dag_input_node"], o["key"], o["accessor_method"], o.get("result_type_string"))

    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        # By now the InputNode was replaced by the execution's input value.
        return pick(self._dag_input_node, self._key, self._accessor_method)

    @property
    def key(self) -> int | str:
        """The index, key or attribute name this node picks."""
        return self._key
