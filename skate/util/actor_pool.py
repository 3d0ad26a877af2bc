"""``ActorPool``: spread calls over a fixed set of actors (follows Ray's ``ray.util.ActorPool``).

Each submitted value goes to an idle actor through ``fn(actor, value)``
(which returns the call's ObjectRef); when every actor is busy the value
waits in a queue and starts as soon as a result is collected and its actor
is free again.  Results come back in submission order (``get_next``,
``map``) or as they finish (``get_next_unordered``, ``map_unordered``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class ActorPool:
    """A fixed pool of actor handles that calls are spread over.

    Args:
        actors: The actor handles to use.
    """

    def __init__(self, actors: list) -> None:
        self._idle: list = list(actors)
        self._actor_of: dict = {}  # in-flight ref -> actor
        self._ref_of: dict[int, Any] = {}  # submission index -> in-flight ref
        self._index_of: dict = {}  # in-flight ref -> submission index
        self._next_submit = 0
        self._next_return = 0
        self._queued: deque = deque()  # (fn, value) waiting for an idle actor

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Runs ``fn(actor, value)`` on an idle actor, or queues it until one is free."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            self._actor_of[ref] = actor
            self._ref_of[self._next_submit] = ref
            self._index_of[ref] = self._next_submit
            self._next_submit += 1
        else:
            self._queued.append((fn, value))

    def has_next(self) -> bool:
        """Whether a submitted call's result is still to be collected."""
        return bool(self._actor_of)

    def has_free(self) -> bool:
        """Whether an actor is idle (and no submission waits for one)."""
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> Any:
        """Takes an idle actor out of the pool; None when none is idle."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Adds an actor to the pool (it starts a queued submission if any).

        Raises:
            ValueError: the actor is already in the pool.
        """
        if actor in self._idle or actor in self._actor_of.values():
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to ``timeout`` seconds.

        Raises:
            StopIteration: nothing is left to collect.
            TimeoutError: the result was not ready in time (with
                ``ignore_if_timedout`` that call is skipped for good).
            Exception: whatever the call raised (as ``get`` raises it).
        """
        from skate._private.api import get, wait

        if not self.has_next():
            raise StopIteration("No more results to get")
        ref = self._ref_of[self._next_return]
        if timeout is not None:
            ready, _ = wait([ref], timeout=timeout)
            if not ready:
                if ignore_if_timedout:
                    self._drop(ref)
                raise TimeoutError(f"Timed out waiting for result after {timeout} seconds")
        self._drop(ref)
        return get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Any finished call's result, waiting up to ``timeout`` seconds.

        Raises:
            StopIteration: nothing is left to collect.
            TimeoutError: no result was ready in time (with ``ignore_if_timedout``
                the oldest outstanding call is skipped for good).
        """
        from skate._private.api import get, wait

        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = wait(list(self._actor_of), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._drop(min(self._index_of, key=self._index_of.__getitem__))
            raise TimeoutError(f"Timed out waiting for result after {timeout} seconds")
        self._drop(ready[0])
        return get(ready[0])

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Runs ``fn(actor, value)`` for each value; yields results in order.

        Results of earlier submissions not collected yet are discarded first.
        """
        self._drain()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map`` but yields results as they finish."""
        self._drain()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    # --- internals ------------------------------------------------------------------------
    def _drop(self, ref: Any) -> None:
        """Stops tracking ``ref``'s call and gives its actor back (a call still running
        there simply runs before the actor's next one)."""
        index = self._index_of.pop(ref)
        self._ref_of.pop(index)
        # get_next() continues with the oldest call not collected yet.
        self._next_return = min(self._index_of.values(), default=self._next_submit)
        self._return_actor(self._actor_of.pop(ref))

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.popleft())

    def _drain(self) -> None:
        while self.has_next():
            try:
                self.get_next_unordered()
            except Exception:  # noqa: BLE001 - discarded results, errors included
                pass
