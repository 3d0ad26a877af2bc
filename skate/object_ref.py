"""``ObjectRef``: a reference to a value that a task returns or ``put`` stores."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from skate._private import runtime


class ObjectRef:
    """A reference to an object in the cluster.

    Pass it to tasks (they get the value), ``get`` it, ``wait`` on it, or
    ``await`` it in asyncio code.  The object lives as long as some reference
    to it does, in any process.
    """

    __slots__ = ("_id", "_owner", "_core", "__weakref__")

    def __init__(self, object_id: bytes, owner: list | None = None, _register: bool = True) -> None:
        self._id = object_id
        self._owner = owner
        core = runtime.current_or_none()
        self._core = core if _register else None
        if _register and core is not None:
            core.store.add_local(object_id, owner)
            self._core = core

    def __del__(self) -> None:
        core = self._core
        if core is not None and not core.closed:
            try:
                core.store.remove_local(self._id)
            except Exception:
                pass

    def binary(self) -> bytes:
        """The id as bytes."""
        return self._id

    def hex(self) -> str:
        """The id as a hex string."""
        return self._id.hex()

    def task_id(self) -> bytes:
        """The id of the task that creates this object."""
        return self._id[:16]

    def owner_address(self) -> Any:
        """Where the owner of this object listens."""
        return self._owner

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> tuple:
        core = runtime.current_or_none()
        if core is not None:
            core.on_serialize_ref(self)
        return (_rebuild, (self._id, self._owner))

    def __await__(self) -> Any:
        return self._as_asyncio_future().__await__()

    def _as_asyncio_future(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        core = runtime.current()

        def done(value: Any = None, exc: BaseException | None = None) -> None:
            if fut.cancelled():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        core.when_ready(self, lambda v, e: loop.call_soon_threadsafe(done, v, e))
        return fut

    def as_future(self) -> asyncio.Future:
        """An asyncio future for the value (call inside a running loop)."""
        return self._as_asyncio_future()

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` that gets the value (or error)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done(value: Any, exc: BaseException | None) -> None:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        runtime.current().when_ready(self, done)
        return fut


def _rebuild(object_id: bytes, owner: list | None) -> ObjectRef:
    # Creating the ref registers it; a new borrow is announced to the owner.
    return ObjectRef(object_id, owner)
