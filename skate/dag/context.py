"""``DAGContext``: process-wide defaults of compiled graphs (follows Ray's ``ray.dag.DAGContext``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


class TensorTransport:
    """A node's tensor transport hint (``with_tensor_transport``)."""

    __slots__ = ("device", "transport")

    def __init__(self, transport: str, device: str) -> None:
        self.transport = transport
        self.device = device

    @classmethod
    def make(cls, transport: Any, device: str, static_shape: bool, direct_return: bool) -> TensorTransport:
        """Checks the arguments of ``with_tensor_transport``.

        Raises:
            ValueError: for an unknown device.
            NotImplementedError: for what skate does not do yet.
        """
        if device not in ("default", "cpu", "cuda", "gpu"):
            raise ValueError(f"device must be 'default', 'cpu', 'cuda' or 'gpu', not {device!r}")
        if transport not in ("auto", "nccl"):
            raise NotImplementedError(
                f"tensor transport {transport!r} is not supported by skate yet: use 'auto' (the graph's "
                "shared-memory and socket channels) or 'nccl' (point-to-point between the actors' GPUs)"
            )
        if static_shape or direct_return:
            raise NotImplementedError("_static_shape and _direct_return are not supported by skate yet")
        return cls(transport, "cuda" if device == "gpu" else device)

    def __repr__(self) -> str:
        return f"TensorTransport(transport={self.transport!r}, device={self.device!r})"


_DEFAULTS = {
    "submit_timeout": 10.0,
    "get_timeout": 10.0,
    "buffer_size_bytes": 1024 * 1024,
    "max_inflight_executions": 10,
    "max_buffered_results": 1000,
    "p2p_backend": "nccl",
}


@dataclasses.dataclass
class DAGContext:
    """Defaults for ``experimental_compile``; a field left None comes from the environment.

    Each field ``f`` reads ``RAY_CGRAPH_<f>`` or ``SKATE_CGRAPH_<f>`` (for
    example ``RAY_CGRAPH_get_timeout=30``) when a graph is compiled, else
    the built-in default: timeouts 10 s (-1: no limit), 1 MiB shared-memory
    slots, 10 executions in flight, 1,000 buffered results, the ``nccl``
    point-to-point backend.
    """

    submit_timeout: float | None = None
    get_timeout: float | None = None
    buffer_size_bytes: int | None = None
    max_inflight_executions: int | None = None
    max_buffered_results: int | None = None
    #: torch.distributed backend of ``transport="nccl"`` edges: ``"nccl"``
    #: (GPUs), or ``"gloo"`` to move CPU tensors the same way.
    p2p_backend: str | None = None

    _current = None

    @classmethod
    def get_current(cls) -> DAGContext:
        """The context of this process (made on first use)."""
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def resolve(self, name: str, given: Any = None) -> Any:
        """``given`` if not None, else this context's field, else the environment, else the default."""
        if given is not None:
            return given
        value = getattr(self, name)
        if value is not None:
            return value
        default = _DEFAULTS[name]
        for prefix in ("RAY_CGRAPH_", "SKATE_CGRAPH_"):
            raw = os.environ.get(prefix + name)
            if raw is not None:
                if isinstance(default, str):
                    return raw
                try:
                    return type(default)(float(raw)) if isinstance(default, int) else type(default)(raw)
                except ValueError:
                    raise ValueError(f"{prefix + name}={raw!r} is not a number") from None
        return default
