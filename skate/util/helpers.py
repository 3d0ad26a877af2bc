"""Helpers on top of the core API (follow Ray's ``ray.util`` helpers of the same names)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def as_completed(refs: Sequence[Any], *, chunk_size: int = 10, yield_obj_refs: bool = False, **kwargs: Any) -> Iterator[Any]:
    """Yields the results of ``refs`` as they become ready, ``chunk_size`` at a time.

    Follows Ray: each round waits (``wait(num_returns=chunk_size)``, with
    ``kwargs`` passed on to ``wait``) and yields the ready ones, values by
    default or the refs themselves with ``yield_obj_refs=True``.

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    from skate._private.api import get, wait

    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    pending = list(refs)
    while pending:
        ready, pending = wait(pending, num_returns=min(chunk_size, len(pending)), **kwargs)
        yield from (ready if yield_obj_refs else get(ready))


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = 100,
    chunk_size: int = 10,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Runs remote function ``fn`` on each item; yields results as they complete.

    Follows Ray: at most ``backpressure_size`` tasks are in flight (None: no
    limit); results come ``chunk_size`` at a time, in no particular order.

    Raises:
        ValueError: ``chunk_size`` < 1 or ``backpressure_size`` < 1.
    """
    from skate._private.api import get, wait

    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if backpressure_size is not None and backpressure_size < 1:
        raise ValueError("`backpressure_size` must be >= 1 or None")
    pending: list = []
    for item in items:
        if backpressure_size is not None and len(pending) >= backpressure_size:
            ready, pending = wait(pending, num_returns=min(chunk_size, len(pending)), **kwargs)
            yield from (ready if yield_obj_refs else get(ready))
        pending.append(fn.remote(item))
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)


def list_named_actors(all_namespaces: bool = False) -> list:
    """The named actors alive in this job's namespace: their names; with
    ``all_namespaces``, ``{"name": ..., "namespace": ...}`` for every namespace
    (follows Ray)."""
    from skate._private import runtime

    core = runtime.current()
    found = core.gcs_call("list_named_actors", {"namespace": core.namespace, "all_namespaces": all_namespaces})
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in found]
    return [a["name"] for a in found]


def get_node_ip_address(address: str | None = None) -> str:
    """The IP address of this node (as the cluster knows it once connected)."""
    from skate._private import runtime

    core = runtime.current_or_none()
    if core is not None and getattr(core, "node_ip", None):
        return core.node_ip
    import socket

    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
