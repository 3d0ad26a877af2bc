"""``as_completed`` and ``map_unordered``: results as they finish (follow Ray's ``ray.util`` helpers)."""

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
