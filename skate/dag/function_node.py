"""``FunctionNode``: a remote function bound to its arguments (``f.bind(...)``, follows Ray)."""

from __future__ import annotations

from typing import Any

from skate.dag.dag_node import DAGNode


class FunctionNode(DAGNode):
    """A task to run: ``f.bind(*args, **kwargs)``.

    ``execute()`` submits ``f.options(**options).remote(*args, **kwargs)``
    with upstream nodes replaced by their ObjectRefs (top-level refs are
    resolved to values before ``f`` runs; refs nested in containers stay refs,
    as with ``remote``).
    """

    _cg_kind = "function"

    def __init__(self, func_body: Any, func_args: tuple, func_kwargs: dict, func_options: dict,
                 other_args_to_resolve: dict | None = None) -> None:
        self._body = func_body
        super().__init__(func_args, func_kwargs, func_options, other_args_to_resolve)

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        return FunctionNode(self._body, new_args, new_kwargs, new_options, new_other_args_to_resolve)

    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        return self._body.options(**self._bound_options).remote(*self._bound_args, **self._bound_kwargs)
