"""The base of every lazy DAG node (``skate.dag.DAGNode``, follows Ray's ``ray.dag``).

A node holds what ``.bind()`` was given: positional and keyword arguments
(plain values, other nodes, or other nodes nested inside lists, tuples and
dicts), options, and subclass-specific values to resolve ("other args").
Nothing runs until ``execute()`` walks the graph bottom-up, each node once,
and turns every node into an ObjectRef (or an actor handle, for a
``ClassNode``); ``experimental_compile()`` turns the graph into a
``CompiledDAG`` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from skate.dag.scan import find_nodes, replace_nodes

T = TypeVar("T")


class DAGNode:
    """A node of a lazy task graph (follows Ray's ``ray.dag.DAGNode``).

    Args:
        args: Bound positional arguments (``f.bind(1, x)``).
        kwargs: Bound keyword arguments.
        options: Options the node's task or actor runs with (``.options(...)``).
        other_args_to_resolve: Subclass values that may hold nodes too (for
            example the actor a method node calls).
    """

    _skate_dag_node = True
    #: What a compiled graph makes of the node (set by each subclass).
    _cg_kind: str | None = None

    def __init__(
        self,
        args: tuple | list,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        other_args_to_resolve: dict[str, Any] | None,
    ) -> None:
        self._bound_args: tuple = tuple(args or ())
        self._bound_kwargs: dict[str, Any] = dict(kwargs or {})
        self._bound_options: dict[str, Any] = dict(options or {})
        self._bound_other_args_to_resolve: dict[str, Any] = dict(other_args_to_resolve or {})
        self._uuid: str | None = None  # made on first use: copies made per execute() skip it
        self._type_hint: Any = None
        self._compiled = False

    # --- what was bound ---------------------------------------------------------------
    def get_args(self) -> tuple:
        """The bound positional arguments."""
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        """A copy of the bound keyword arguments."""
        return dict(self._bound_kwargs)

    def get_options(self) -> dict[str, Any]:
        """A copy of the node's options."""
        return dict(self._bound_options)

    def get_other_args_to_resolve(self) -> dict[str, Any]:
        """A copy of the subclass-specific values to resolve."""
        return dict(self._bound_other_args_to_resolve)

    @property
    def _stable_uuid(self) -> str:
        if self._uuid is None:
            self._uuid = uuid.uuid4().hex
        return self._uuid

    def get_stable_uuid(self) -> str:
        """An id made once per node and kept by copies (``_copy``)."""
        return self._stable_uuid

    # --- walking the graph ------------------------------------------------------------
    def _get_all_child_nodes(self) -> list[DAGNode]:
        """The nodes this node reads, however deeply nested in its arguments, in order, once each."""
        out: list[DAGNode] = []
        find_nodes(list(self._bound_args), out)
        find_nodes(self._bound_kwargs, out)
        find_nodes(self._bound_other_args_to_resolve, out)
        return out

    def _apply_and_replace_all_child_nodes(self, fn: Callable[[DAGNode], Any]) -> DAGNode:
        """A copy of this node whose direct children ``c`` are replaced by ``fn(c)`` (shallow).

        A node without children is returned as it is.
        """
        children = self._get_all_child_nodes()
        if not children:
            return self
        table = {id(c): fn(c) for c in children}
        return self._copy(
            list(replace_nodes(list(self._bound_args), table)),
            replace_nodes(self._bound_kwargs, table),
            self.get_options(),
            replace_nodes(self._bound_other_args_to_resolve, table),
        )

    def apply_recursive(self, fn: Callable[[DAGNode], T]) -> T:
        """Applies ``fn`` to every node bottom-up, once per node, and returns ``fn`` of this node.

        Each node ``fn`` sees is a copy whose child nodes were already replaced
        by what ``fn`` returned for them.

        Raises:
            AssertionError: when the graph holds more than one InputNode (as Ray does).
        """
        cache: dict[int, Any] = {}
        inputs: list[DAGNode] = []

        def visit(node: DAGNode) -> Any:
            key = id(node)
            if key in cache:
                return cache[key]
            if node._cg_kind == "input":
                if inputs and inputs[0] is not node:
                    raise AssertionError("Each DAG should only have one unique InputNode.")
                inputs.append(node)
            cache[key] = result = fn(node._apply_and_replace_all_child_nodes(visit))
            return result

        return visit(self)

    def traverse_and_apply(self, fn: Callable[[DAGNode], Any]) -> None:
        """Calls ``fn`` on every node reachable from this one, once each, parents before children.

        Unlike ``apply_recursive`` it copies nothing and returns nothing.

        Raises:
            ValueError: when the graph holds more than one InputNode (as Ray does).
        """
        seen: set[int] = set()
        inputs: list[DAGNode] = []
        stack: list[DAGNode] = [self]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node._cg_kind == "input":
                if inputs and inputs[0] is not node:
                    raise ValueError("Each DAG should only have one unique InputNode.")
                inputs.append(node)
            fn(node)
            stack.extend(reversed(node._get_all_child_nodes()))

    # --- running ----------------------------------------------------------------------
    def execute(self, *args: Any, _ray_cache_refs: bool = False, **kwargs: Any) -> Any:
        """Runs the graph once with ordinary tasks and actor calls (no compilation).

        ``args``/``kwargs`` are the graph's input (what its ``InputNode``
        stands for).  Returns this node's ObjectRef (a list of them for a
        ``MultiOutputNode``, an actor handle for a ``ClassNode``).
        """
        if _ray_cache_refs:
            raise NotImplementedError("execute(_ray_cache_refs=True) is not supported by skate")

        def run(node: DAGNode) -> Any:
            return node._execute_impl(*args, **kwargs)

        return self.apply_recursive(run)

    def experimental_compile(
        self,
        _submit_timeout: float | None = None,
        _buffer_size_bytes: int | None = None,
        enable_asyncio: bool = False,
        _max_inflight_executions: int | None = None,
        _max_buffered_results: int | None = None,
        _overlap_gpu_communication: bool | None = None,
        _default_communicator: Any = "create",
    ) -> Any:
        """Compiles the graph: channels and actor loops set up once, then cheap ``execute`` calls.

        Args:
            _submit_timeout: Seconds ``execute()`` may wait to hand its input
                to the graph (default ``RAY_CGRAPH_submit_timeout``, 10 s; -1: forever).
            _buffer_size_bytes: Bytes of each shared-memory slot a value
                travels in (default 1 MiB); larger values go through the socket.
            enable_asyncio: Drive the graph from this thread's asyncio event
                loop with ``execute_async``.
            _max_inflight_executions: Executions submitted but not yet read
                back at once (default 10).
            _max_buffered_results: Results read back but not yet fetched with
                ``get`` at once (default 1,000).
            _overlap_gpu_communication: Not supported (GPU communication);
                only ``None``/``False`` are accepted.
            _default_communicator: Only ``"create"``/``None`` are accepted.

        Returns:
            A ``CompiledDAG``.

        Raises:
            ValueError: when the graph was compiled before or cannot be compiled.
            NotImplementedError: for nodes compiled graphs do not run (tasks).
        """
        from skate.dag.compiled_dag_node import build_compiled_dag

        if self._compiled:
            raise ValueError(
                "It is not allowed to call `experimental_compile` on the same DAG object multiple "
                "times no matter whether `teardown` is called or not. Please reuse the existing "
                "compiled DAG or create a new one."
            )
        compiled = build_compiled_dag(
            self,
            submit_timeout=_submit_timeout,
            buffer_size_bytes=_buffer_size_bytes,
            enable_asyncio=enable_asyncio,
            max_inflight_executions=_max_inflight_executions,
            max_buffered_results=_max_buffered_results,
            overlap_gpu_communication=_overlap_gpu_communication,
            default_communicator=_default_communicator,
        )
        self._compiled = True
        return compiled

    def with_tensor_transport(self, transport: str = "auto", device: str = "default", _static_shape: bool = False,
                              _direct_return: bool = False) -> DAGNode:
        """Says this node's value holds torch tensors, and where readers want them (follows Ray).

        In a compiled graph each tensor of the value then travels as raw
        bytes: through shared memory on one node, where the reading actor's
        tensor is a view of it (no copy), and arrives on ``device``:
        ``"cpu"``, ``"cuda"``/``"gpu"`` (the reader's current GPU), or
        ``"default"``: the device type it had.  Without compilation the hint
        changes nothing, as in Ray.

        With ``transport="nccl"`` the tensors skip the channel: the actors
        that send or receive them form a torch.distributed process group at
        compile time and each tensor goes by send/recv, GPU to GPU (backend
        ``RAY_CGRAPH_p2p_backend``: ``nccl``, or ``gloo`` for CPU tensors).

        Args:
            transport: ``"auto"`` (the graph's channels) or ``"nccl"``.
            device: ``"default"``, ``"cpu"``, ``"cuda"`` or ``"gpu"``.

        Returns:
            This node.

        Raises:
            ValueError: for an unknown device.
            NotImplementedError: for other transports (communicator objects)
                and for ``_static_shape``/``_direct_return``.
        """
        from skate.dag.context import TensorTransport

        self._type_hint = TensorTransport.make(transport, device, _static_shape, _direct_return)
        return self

    def with_type_hint(self, typ: Any) -> DAGNode:
        """Type hints (``TorchTensorType``) are not supported by skate; use ``with_tensor_transport``.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("with_type_hint() is not supported by skate; use with_tensor_transport()")

    # --- subclass hooks ---------------------------------------------------------------
    def _execute_impl(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _copy_impl(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        raise NotImplementedError

    def _copy(self, new_args: list, new_kwargs: dict, new_options: dict, new_other_args_to_resolve: dict) -> DAGNode:
        """A copy with new arguments, keeping the stable uuid."""
        node = self._copy_impl(new_args, new_kwargs, new_options, new_other_args_to_resolve)
        node._uuid = self._stable_uuid
        node._type_hint = self._type_hint
        return node

    def __getattr__(self, attr: str) -> Any:
        if attr == "bind":
            raise AttributeError(f".bind() cannot be used again on {type(self)} ")
        if attr == "remote":
            raise AttributeError(
                f".remote() cannot be used on {type(self)}. To execute the task graph for this node, use .execute()."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __getstate__(self) -> dict:
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"({type(self).__name__}, {self._stable_uuid})"
