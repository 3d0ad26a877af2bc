"""Identifier types.

Internally every id is a ``bytes`` value (cheap to hash and to put in a
msgpack header); the public wrappers below give them Ray's ``hex()`` and
``binary()`` accessors for the runtime context.
"""

from __future__ import annotations

import os
import struct

TASK_ID_LEN = 16
OBJECT_ID_LEN = 20


def new_id(n: int = 16) -> bytes:
    """A random id of ``n`` bytes."""
    return os.urandom(n)


def object_id_for(task_id: bytes, index: int) -> bytes:
    """The id of return value ``index`` of ``task_id`` (puts use index 0 of a fresh id)."""
    return task_id + struct.pack("<I", index)


class BaseID:
    """An opaque identifier with Ray's accessors."""

    __slots__ = ("_b",)

    def __init__(self, binary: bytes) -> None:
        self._b = binary

    def binary(self) -> bytes:
        """The raw bytes."""
        return self._b

    def hex(self) -> str:
        """The id as a hex string."""
        return self._b.hex()

    def is_nil(self) -> bool:
        """True for the empty id."""
        return not any(self._b)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._b == self._b  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._b)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    def __str__(self) -> str:
        return self.hex()


class UniqueID(BaseID):
    """A generic unique id."""


class JobID(BaseID):
    """Identifies a driver's job."""


class TaskID(BaseID):
    """Identifies a task."""


class ActorID(BaseID):
    """Identifies an actor."""


class NodeID(BaseID):
    """Identifies a node."""


class WorkerID(BaseID):
    """Identifies a worker process."""


class ObjectID(BaseID):
    """Identifies an object."""


class PlacementGroupID(BaseID):
    """Identifies a placement group (18 bytes, like Ray's)."""

    @classmethod
    def from_random(cls) -> PlacementGroupID:
        """A fresh random id."""
        return cls(new_id(18))

    @classmethod
    def from_hex(cls, hex_id: str) -> PlacementGroupID:
        """The id with this hex form."""
        return cls(bytes.fromhex(hex_id))

    @classmethod
    def nil(cls) -> PlacementGroupID:
        """The empty id."""
        return cls(bytes(18))
