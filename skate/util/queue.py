"""``Queue``: a FIFO queue that tasks and actors share (follows Ray).

The items live in one async actor that holds an ``asyncio.Queue``; the
``Queue`` object is a thin client around its handle, so it pickles into
tasks and actors and every copy talks to the same queue.  A blocking
``get``/``put`` is one actor call whose coroutine waits inside the actor
(up to ``timeout``), so waiting costs no polling and many callers can wait
at once.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable
from typing import Any

import skate
from skate import exceptions as exc
from skate._private import api


class Empty(queue.Empty):
    """Raised by ``get`` on an empty queue: at once without blocking, else on timeout."""


class Full(queue.Full):
    """Raised by ``put`` on a full queue: at once without blocking, else on timeout."""


class _QueueActor:
    """The actor that owns the items (runs on its own event loop)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full for {timeout}s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout}s") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(
                f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                f"and maxsize {self.maxsize}."
            )
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A first-in, first-out queue shared by tasks and actors (follows Ray).

    Behaves like ``asyncio.Queue`` / ``queue.Queue``, with sync and async
    ``put``/``get``.  Pass the ``Queue`` object to tasks and actors: every
    copy uses the same queue.

    Args:
        maxsize: Most items held at once; 0 (the default) means unbounded.
        actor_options: Options for the actor that holds the items, passed to
            its ``.options(...)`` (e.g. ``{"num_cpus": 1}``, a ``name`` or a
            ``lifetime``).

    Raises:
        ValueError: if an actor option is invalid (as ``.options`` raises).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        self.maxsize = maxsize
        actor_cls = skate.remote(_QueueActor)
        self.actor: Any = actor_cls.options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return api.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (same as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        """True if the queue holds no item."""
        return api.get(self._actor().empty.remote())

    def full(self) -> bool:
        """True if the queue holds ``maxsize`` items (never for an unbounded queue)."""
        return api.get(self._actor().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Adds ``item`` at the end; when full, waits for room if ``block``.

        Several producers waiting on a full queue get in in no set order.

        Raises:
            Full: if the queue is full and ``block`` is False, or it stayed
                full for ``timeout`` seconds.
            ValueError: if ``timeout`` is negative.
        """
        if not block:
            api.get(self._actor().put_nowait.remote(item))
            return
        _check_timeout(timeout)
        api.get(self._actor().put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the thread.

        Raises:
            Full: as ``put``.
            ValueError: if ``timeout`` is negative.
        """
        if not block:
            await self._actor().put_nowait.remote(item)
            return
        _check_timeout(timeout)
        await self._actor().put.remote(item, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Removes and returns the first item; when empty, waits for one if ``block``.

        Several consumers waiting on an empty queue are served in no set order.

        Raises:
            Empty: if the queue is empty and ``block`` is False, or it stayed
                empty for ``timeout`` seconds.
            ValueError: if ``timeout`` is negative.
        """
        if not block:
            return api.get(self._actor().get_nowait.remote())
        _check_timeout(timeout)
        return api.get(self._actor().get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code: awaits instead of blocking the thread.

        Raises:
            Empty: as ``get``.
            ValueError: if ``timeout`` is negative.
        """
        if not block:
            return await self._actor().get_nowait.remote()
        _check_timeout(timeout)
        return await self._actor().get.remote(timeout)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``.

        Raises:
            Full: if the queue is full.
        """
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Adds all ``items`` in order in one call, or none of them.

        Raises:
            TypeError: if ``items`` is not iterable.
            Full: if they do not all fit.
        """
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        api.get(self._actor().put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """``get(block=False)``.

        Raises:
            Empty: if the queue is empty.
        """
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Removes and returns the first ``num_items`` items in one call, or none.

        Raises:
            TypeError: if ``num_items`` is not an int.
            ValueError: if ``num_items`` is negative.
            Empty: if the queue holds fewer than ``num_items`` items.
        """
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return api.get(self._actor().get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Ends the actor that holds the items, releasing its resources.

        Items still queued are lost; callers still waiting in ``get``/``put``
        get ``ActorDiedError``.  Afterwards every method of this object
        raises RuntimeError.

        Args:
            force: Kill the actor at once instead of asking it to exit.
            grace_period_s: Without ``force``, seconds to wait for the actor
                to exit before killing it.
        """
        if self.actor is None:
            return
        if force:
            api.kill(self.actor, no_restart=True)
        else:
            done = self.actor.__ray_terminate__.remote()
            ready, _ = api.wait([done], timeout=grace_period_s)
            if ready:
                _consume_exit(done)
            else:
                api.kill(self.actor, no_restart=True)
        self.actor = None

    def _actor(self) -> Any:
        if self.actor is None:
            raise RuntimeError("this Queue was shut down")
        return self.actor


def _consume_exit(ref: Any) -> None:
    """Reads the reply of ``__ray_terminate__`` (the actor's intentional exit), so
    it is not reported as an error nobody looked at."""
    try:
        api.get(ref, timeout=0)
    except exc.RayError:
        pass


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


__all__ = ["Empty", "Full", "Queue"]
