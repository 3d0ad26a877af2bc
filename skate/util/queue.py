"""``Queue``: a first-in, first-out queue that tasks and actors share (follows Ray's
``ray.util.queue``).

The items live in an async actor (an ``asyncio.Queue``); a ``Queue`` object is
a handle to it that can be passed to tasks and actors.  Blocking ``put``/``get``
wait inside the actor, so many producers and consumers can block at once.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any


class Empty(_stdlib_queue.Empty):
    """Raised by ``get`` on an empty queue (at once, or when the timeout passes)."""


class Full(_stdlib_queue.Full):
    """Raised by ``put`` on a full queue (at once, or when the timeout passes)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full for {timeout} s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize={self.maxsize})") from None

    async def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"cannot add {len(items)} items to a queue of {self.queue.qsize()}/{self.maxsize}")
        for item in items:
            self.queue.put_nowait(item)

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    async def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot get {num_items} items from a queue of {self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]


def _plain(err: BaseException) -> BaseException:
    """Empty/Full as raised in the actor, without the task-error wrapper."""
    cause = getattr(err, "cause", None)
    return type(cause)(*cause.args) if isinstance(cause, (Empty, Full)) else err


class Queue:
    """A first-in, first-out queue shared by tasks and actors (follows Ray).

    Args:
        maxsize: The most items it holds; 0 (default): no limit.
        actor_options: Options for the actor holding the items (as ``.options()``
            takes them), e.g. ``{"num_cpus": 1}``.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        import skate

        self.maxsize = maxsize
        actor_cls = skate.remote(_QueueActor)
        self.actor = actor_cls.options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return self.qsize()

    def qsize(self) -> int:
        """The number of items in the queue."""
        import skate

        return skate.get(self.actor.qsize.remote())

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, when unbounded)."""
        return self.maxsize > 0 and self.qsize() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Adds an item, waiting (up to ``timeout`` seconds) for room when ``block``.

        Raises:
            Full: no room (at once when not ``block``, else after ``timeout``).
            ValueError: a negative ``timeout``.
        """
        self._call(self._put_ref(item, block, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code."""
        await self._await(self._put_ref(item, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Removes and returns the oldest item, waiting (up to ``timeout`` seconds)
        for one when ``block``.

        Raises:
            Empty: no item (at once when not ``block``, else after ``timeout``).
            ValueError: a negative ``timeout``.
        """
        return self._call(self._get_ref(block, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code."""
        return await self._await(self._get_ref(block, timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Adds all ``items`` in order, or none of them.

        Raises:
            Full: they do not all fit.
            TypeError: ``items`` is not iterable.
        """
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        self._call(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Removes and returns the ``num_items`` oldest items, in order.

        Raises:
            Empty: fewer items are there.
            ValueError: ``num_items`` is not a non-negative int.
        """
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError("'num_items' must be a nonnegative integer")
        return self._call(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Ends the actor holding the items (at once with ``force``, else after the calls
        it runs, waiting up to ``grace_period_s`` before killing it)."""
        import skate

        if self.actor is None:
            return
        if force:
            skate.kill(self.actor, no_restart=True)
        else:
            done = self.actor.__ray_terminate__.remote()
            ready, _ = skate.wait([done], timeout=grace_period_s)
            if not ready:
                skate.kill(self.actor, no_restart=True)
        self.actor = None

    # --- internals ------------------------------------------------------------------------
    def _put_ref(self, item: Any, block: bool, timeout: float | None) -> Any:
        if not block:
            return self.actor.put_nowait.remote(item)
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return self.actor.put.remote(item, timeout)

    def _get_ref(self, block: bool, timeout: float | None) -> Any:
        if not block:
            return self.actor.get_nowait.remote()
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return self.actor.get.remote(timeout)

    def _call(self, ref: Any) -> Any:
        import skate

        try:
            return skate.get(ref)
        except (Empty, Full) as e:
            raise _plain(e) from None

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except (Empty, Full) as e:
            raise _plain(e) from None
