"""What ``CompiledDAG.execute`` returns: ``CompiledDAGRef`` and, with asyncio, ``CompiledDAGFuture``."""

from __future__ import annotations

from typing import Any


class CompiledDAGRef:
    """One output of one execution of a compiled graph (follows Ray).

    ``skate.get(ref)`` (or ``ref.get()``) returns it, once; it cannot be
    passed to tasks or actors.
    """

    #: Lets ``skate.get`` tell these from ObjectRefs without importing this module.
    _skate_cgraph_ref = True

    def __init__(self, dag: Any, execution_index: int, channel_index: int | None = None) -> None:
        self._dag = dag
        self._execution_index = execution_index
        self._channel_index = channel_index
        self._consumed = False

    def __repr__(self) -> str:
        return f"CompiledDAGRef({self._dag.get_id()}, execution_index={self._execution_index})"

    def __reduce__(self) -> Any:
        raise TypeError("CompiledDAGRef cannot be used as Ray task/actor argument.")

    def __copy__(self) -> Any:
        raise ValueError("CompiledDAGRef cannot be copied.")

    def __deepcopy__(self, memo: Any) -> Any:
        raise ValueError("CompiledDAGRef cannot be deep copied.")

    def get(self, timeout: float | None = None) -> Any:
        """The value (waits up to ``timeout`` s; None: ``RAY_CGRAPH_get_timeout``; -1: forever).

        Raises:
            ValueError: on a second ``get`` of the same ref.
            RayTaskError: (also an instance of the method's exception class) when the method raised.
            ActorDiedError: when an actor of the graph died (the graph is torn down).
            RayChannelTimeoutError: when ``timeout`` passed first.
            RayChannelError: when the graph was torn down or its channels broke.
        """
        if self._consumed:
            raise ValueError(
                "ray.get() can only be called once on a CompiledDAGRef, and it was already called."
            )
        self._consumed = True
        return self._dag._get(self._execution_index, self._channel_index, timeout)

    def __del__(self) -> None:
        if not self.__dict__.get("_consumed", True):
            try:
                self._dag._discard(self._execution_index, self._channel_index)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class CompiledDAGFuture:
    """One output of one ``execute_async``: ``await`` it once for the value (follows Ray)."""

    def __init__(self, dag: Any, execution_index: int, fut: Any, channel_index: int | None = None) -> None:
        self._dag = dag
        self._execution_index = execution_index
        self._fut = fut
        self._channel_index = channel_index
        self._awaited = False

    def __repr__(self) -> str:
        return f"CompiledDAGFuture({self._dag.get_id()}, execution_index={self._execution_index})"

    def __reduce__(self) -> Any:
        raise TypeError("CompiledDAGFuture cannot be used as Ray task/actor argument.")

    def __await__(self) -> Any:
        if self._awaited:
            raise ValueError("await can only be called once on a CompiledDAGFuture, and it was already called.")
        self._awaited = True
        value = yield from self._fut.__await__()
        return self._dag._unwrap(value)


def get_compiled(refs: Any, timeout: float | None) -> Any:
    """``skate.get`` of one CompiledDAGRef or a list of them (one deadline for all).

    Raises:
        ValueError: for a list mixing CompiledDAGRefs with other things.
    """
    import time

    if isinstance(refs, CompiledDAGRef):
        return refs.get(timeout)
    if not all(isinstance(r, CompiledDAGRef) for r in refs):
        raise ValueError("Invalid type of object refs: a list given to get() cannot mix CompiledDAGRefs and ObjectRefs.")
    if timeout is None or timeout < 0:
        return [r.get(timeout) for r in refs]
    end = time.monotonic() + timeout
    return [r.get(max(end - time.monotonic(), 0.0)) for r in refs]
