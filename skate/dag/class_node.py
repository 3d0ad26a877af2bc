"""Actors in a graph: ``ClassNode`` (``Cls.bind(...)``) and ``ClassMethodNode``
(``handle.method.bind(...)`` or ``class_node.method.bind(...)``), following Ray."""

from __future__ import annotations

from typing import Any

from skate.dag.dag_node import DAGNode

PARENT_CLASS_NODE_KEY = "parent_class_node"
PREV_CLASS_METHOD_CALL_KEY = "prev_class_method_call"


class ClassNode(DAGNode):
    """An actor to create: ``Cls.bind(*args, **kwargs)``.

    ``execute()`` creates the actor (a new one per execution) and returns its
    handle; ``class_node.method.bind(...)`` calls a method of that actor.
    """

    _cg_kind = "class"

    def __init__(self, cls: Any, cls_args: tuple, cls_kwargs: dict, cls_options: dict,
                 other_args_to_resolve: dict | None = None) -> None:
        self._body = cls
        super().__init__(cls_args, cls_kwargs, cls_options, other_args_to_resolve)

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        return ClassNode(self._body, new_args, new_kwargs, new_options, new_other_args_to_resolve)

    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        return self._body.options(**self._bound_options).remote(*self._bound_args, **self._bound_kwargs)

    def __getattr__(self, method_name: str) -> Any:
        if method_name.startswith("_") or method_name in ("bind", "remote"):
            return super().__getattr__(method_name)
        body = self.__dict__.get("_body")
        meta = getattr(body, "_meta", None)
        if meta is not None and method_name not in meta:
            raise AttributeError(f"'{getattr(body, '_name', 'actor')}' actor has no method {method_name!r}")
        # meta: method name -> (num_returns, call signature)
        num_returns = meta[method_name][0] if meta is not None else 1
        return _UnboundClassMethod(self, method_name, {"num_returns": num_returns})


class _UnboundClassMethod:
    """``class_node.method``: what ``.bind()`` / ``.options()`` apply to."""

    def __init__(self, actor: Any, method_name: str, options: dict) -> None:
        self._actor = actor
        self._method_name = method_name
        self._options = options

    def options(self, **options: Any) -> _UnboundClassMethod:
        return _UnboundClassMethod(self._actor, self._method_name, dict(self._options, **options))

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        return ClassMethodNode(
            self._method_name, args, kwargs, self._options,
            {PARENT_CLASS_NODE_KEY: self._actor, PREV_CLASS_METHOD_CALL_KEY: None},
        )


class ClassMethodNode(DAGNode):
    """A call of an actor method: ``handle.method.bind(*args, **kwargs)``.

    The actor is ``other_args_to_resolve["parent_class_node"]``: an actor
    handle, or a ``ClassNode`` whose actor ``execute()`` creates first.
    """

    _cg_kind = "method"

    def __init__(self, method_name: str, method_args: tuple, method_kwargs: dict, method_options: dict,
                 other_args_to_resolve: dict) -> None:
        self._method_name = method_name
        self._parent_class_node = (other_args_to_resolve or {}).get(PARENT_CLASS_NODE_KEY)
        super().__init__(method_args, method_kwargs, method_options, other_args_to_resolve)

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        return ClassMethodNode(self._method_name, new_args, new_kwargs, new_options, new_other_args_to_resolve)

    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        handle = self._parent_class_node  # by now an actor handle
        method = getattr(handle, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        return method.remote(*self._bound_args, **self._bound_kwargs)

    def _get_actor_handle(self) -> Any:
        """The actor handle this node calls, or None while it is a ClassNode's actor to be created."""
        parent = self._parent_class_node
        return None if isinstance(parent, DAGNode) else parent

    def get_method_name(self) -> str:
        """The name of the method this node calls."""
        return self._method_name

    @property
    def is_class_method_call(self) -> bool:
        """True: the node calls an actor method (follows Ray)."""
        return True
