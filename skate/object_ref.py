"""``ObjectRef``: a reference to a value that a task returns or ``put`` stores."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import weakref
from collections.abc import Callable
from typing import Any

from skate._private import ids, runtime
from skate._private.core_worker.memory_store import PENDING

_NIL = b"\0" * ids.OBJECT_ID_LEN

# Per ref awaited through asyncio.wait(): [ready?, {callback: loop}] (see add_done_callback).
_waiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    @classmethod
    def nil(cls) -> ObjectRef:
        """The nil ref (all-zero id); refers to no object (follows Ray)."""
        return cls(_NIL, None, _register=False)

    def is_nil(self) -> bool:
        """True for the nil ref."""
        return self._id == _NIL

    @classmethod
    def from_binary(cls, id_bytes: bytes) -> ObjectRef:
        """A ref to the object with this id: a working ref when this process owns or
        holds that object, else one only good for comparing ids (its owner is unknown)."""
        oid = bytes(id_bytes)
        core = runtime.current_or_none()
        if core is not None and core.store.get(oid) is not None:
            return cls(oid, core.address)
        return cls(oid, None, _register=False)

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        """``from_binary`` of the id given in hex."""
        return cls.from_binary(bytes.fromhex(hex_id))

    @classmethod
    def from_random(cls) -> ObjectRef:
        """A ref with a random id, referring to no object."""
        return cls(os.urandom(ids.OBJECT_ID_LEN), None, _register=False)

    def binary(self) -> bytes:
        """The id as bytes."""
        return self._id

    def hex(self) -> str:
        """The id as a hex string."""
        return self._id.hex()

    def task_id(self) -> ids.TaskID:
        """The id of the task that creates this object."""
        return ids.TaskID(self._id[: ids.TASK_ID_LEN])

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

    def as_future(self, _internal: bool = False) -> asyncio.Future:
        """An asyncio future for the value, on the running (or current) event loop."""
        try:
            return self._as_asyncio_future()
        except RuntimeError:  # no running loop: like Ray, wrap the thread-safe future
            return asyncio.wrap_future(self.future())

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` that gets the value (or error); usable from any
        thread, and in asyncio through ``asyncio.wrap_future``."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done(value: Any, exc: BaseException | None) -> None:
            if fut.cancelled():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        runtime.current().when_ready(self, done)
        return fut

    # --- what asyncio.wait() needs of the things it waits on ---------------------------------
    def done(self) -> bool:
        """Whether the value (or error) is ready; lets ``asyncio.wait(refs)`` take refs."""
        w = _waiters.get(self)
        if w is not None and w[0]:
            return True
        core = self._core or runtime.current_or_none()
        e = core.store.get(self._id) if core is not None else None
        return e is not None and e.state != PENDING

    def add_done_callback(self, fn: Callable[[ObjectRef], Any], *, context: Any = None) -> None:
        """Calls ``fn(self)`` on the running event loop once the value is ready
        (what ``asyncio.wait`` uses; ``await ref`` needs none of this)."""
        loop = asyncio.get_running_loop()
        w = _waiters.get(self)
        if w is None:
            w = _waiters[self] = [False, {}]
        w[1][fn] = loop
        if w[0]:
            loop.call_soon(self._fire, fn, context=context)
            return
        if len(w[1]) > 1:
            return  # a when_ready for this ref is already registered

        def ready(value: Any, err: BaseException | None) -> None:
            w[0] = True
            for cb, cb_loop in list(w[1].items()):
                cb_loop.call_soon_threadsafe(self._fire, cb)

        runtime.current().when_ready(self, ready)

    def remove_done_callback(self, fn: Callable[[ObjectRef], Any]) -> int:
        """Forgets a callback of ``add_done_callback``; returns how many were removed."""
        w = _waiters.get(self)
        if w is None or fn not in w[1]:
            return 0
        del w[1][fn]
        return 1

    def _fire(self, fn: Callable[[ObjectRef], Any]) -> None:
        w = _waiters.get(self)
        if w is not None and w[1].pop(fn, None) is not None:
            fn(self)


ObjectID = ObjectRef
"""Old name of ObjectRef (follows Ray)."""


def _rebuild(object_id: bytes, owner: list | None) -> ObjectRef:
    # Creating the ref registers it; a new borrow is announced to the owner.
    return ObjectRef(object_id, owner)
