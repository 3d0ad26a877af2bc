"""``ActorPool``: schedule work over a fixed set of actors (follows Ray).

The pool hands each submitted value to an idle actor through a user
function ``fn(actor, value) -> ObjectRef``; an actor is busy until the
result it produces is fetched with ``get_next`` / ``get_next_unordered``.
Values submitted while every actor is busy wait in a local FIFO and go out
as actors come back.  Everything runs on the calling thread: the pool is a
plain driver-side object with no process of its own.

    submit(fn, v) --idle actor?--> fn(actor, v) -> ref   (in flight)
                  \\--no---------> pending FIFO
    get_next()    <-- get(ref) --  actor returns to idle -> next pending goes out
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from skate import exceptions as exc
from skate._private import api

_TIMEOUT_MSG = "Timed out waiting for result"


class ActorPool:
    """A fixed pool of actors that values are mapped over (follows Ray).

    Args:
        actors: Actor handles to use; all start idle.

    Example::

        pool = ActorPool([A.remote(), A.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))  # [2, 4, 6]
    """

    def __init__(self, actors: list) -> None:
        self._idle_actors: list = list(actors)
        # result key (ref, or tuple of refs) -> (submission index, actor)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}
        # submission index -> result (ref or list of refs), for in-order returns
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list[tuple[Callable, Any]] = []

    # --- bulk ------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Applies ``fn(actor, value)`` over ``values``; yields results in order.

        Results of earlier submissions that were not fetched yet are dropped
        first, as in Ray.  The work is only fetched (and the pending values
        sent) while the returned iterator is consumed.

        Args:
            fn: Takes ``(actor, value)`` and returns the ObjectRef of the
                result; the actor is busy until that ref is fetched.
            values: The values to apply ``fn`` to.

        Returns:
            An iterator over the results, in the order of ``values``.
        """
        self._drop_unfetched()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Like ``map`` but yields each result as soon as it is ready.

        Unlike ``map``, it first waits for the results of earlier
        submissions that were not fetched yet and discards them (a task
        error among them is raised), as Ray's does.

        Returns:
            An iterator over the results, in completion order.
        """
        while self.has_next():
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drop_unfetched(self) -> None:
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # --- one at a time ---------------------------------------------------------------------
    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedules ``fn(actor, value)`` on an idle actor, or queues it until one is free.

        Fetch the result with ``get_next()`` or ``get_next_unordered()``.
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """True while some submitted work has a result not yet fetched."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Returns the next result in submission order.

        Args:
            timeout: Seconds to wait for it; None waits as long as it takes.
            ignore_if_timedout: On timeout, give the result up (its actor
                goes back to the pool) and move on to the next one, still
                raising ``TimeoutError``.

        Raises:
            StopIteration: if nothing is left to fetch.
            ValueError: if ``get_next_unordered`` was used since the last
                ``map``/submission round (the order is lost).
            TimeoutError: if ``timeout`` passes first.
            Exception: the task's own error, as ``get`` raises it.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            refs = _refs(future)
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MSG)
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._fetch(future, actor)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Returns whichever pending result is ready first.

        After this, ``get_next`` raises ValueError until the work submitted
        so far is all fetched (results no longer come back in order).

        Args:
            timeout: Seconds to wait; None waits as long as it takes.
            ignore_if_timedout: On timeout, give up the oldest pending result
                (its actor goes back to the pool), still raising ``TimeoutError``.

        Raises:
            StopIteration: if nothing is left to fetch.
            TimeoutError: if ``timeout`` passes first.
            Exception: the task's own error, as ``get`` raises it.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._first_ready(timeout)
        timed_out = key is None
        if timed_out:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMEOUT_MSG)
            key = next(iter(self._future_to_actor))
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._fetch(future, actor)

    def _first_ready(self, timeout: float | None) -> Any:
        """The key of a pending result whose refs are all ready, or None on timeout."""
        by_ref: dict[Any, Any] = {}
        for key in self._future_to_actor:
            for ref in _refs(key):
                by_ref[ref] = key
        deadline = None if timeout is None else time.monotonic() + timeout
        want = 1
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = api.wait(list(by_ref), num_returns=want, timeout=left)
            done = set(ready)
            for ref in ready:  # a list result counts once every ref of it is ready
                key = by_ref[ref]
                if all(r in done for r in _refs(key)):
                    return key
            if len(ready) < want:
                return None
            want = len(ready) + 1

    def _fetch(self, future: Any, actor: Any) -> Any:
        alive = True
        try:
            return api.get(future)
        except exc.ActorDiedError:
            alive = False  # a dead actor would take every later submission down with it
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))

    # --- membership ------------------------------------------------------------------------
    def has_free(self) -> bool:
        """True if some actor is idle and no submitted value is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any:
        """Takes an idle actor out of the pool; returns it, or None if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Adds an actor to the pool (idle; it takes a waiting value at once if any).

        Raises:
            ValueError: if the actor is already in this pool.
        """
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _key(future: Any) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _refs(future: Any) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]


__all__ = ["ActorPool"]
