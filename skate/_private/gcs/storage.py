"""Where the control store keeps its tables: a storage interface and its backends.

::

    Table("actors")  --get/set/delete/items-->  Storage  (memory, or Redis)

A ``Table`` keeps records in memory for reads and writes every change
through to its ``Storage``, so a durable backend only has to implement the
four calls of ``Storage``.  ``open_storage`` picks the backend from a URL.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, Protocol


class Storage(Protocol):
    """A store of ``(table, key) -> record``."""

    def get(self, table: str, key: Hashable) -> Any:
        """The record, or None."""

    def put(self, table: str, key: Hashable, value: Any) -> None:
        """Stores (or replaces) a record."""

    def delete(self, table: str, key: Hashable) -> bool:
        """Removes a record; True if there was one."""

    def items(self, table: str) -> Iterator[tuple[Hashable, Any]]:
        """Every record of ``table``."""


class MemoryStorage:
    """Records in this process's memory: lost when the control store exits."""

    def __init__(self) -> None:
        self._tables: dict[str, dict] = {}

    def get(self, table: str, key: Hashable) -> Any:
        return self._tables.get(table, {}).get(key)

    def put(self, table: str, key: Hashable, value: Any) -> None:
        self._tables.setdefault(table, {})[key] = value

    def delete(self, table: str, key: Hashable) -> bool:
        return self._tables.get(table, {}).pop(key, None) is not None

    def items(self, table: str) -> Iterator[tuple[Hashable, Any]]:
        return iter(list(self._tables.get(table, {}).items()))


def is_durable(url: str | None) -> bool:
    """True when tables at ``url`` outlive the control store process."""
    return url not in (None, "", "memory")


def open_storage(url: str | None, namespace: str = "default") -> Storage:
    """The backend for ``url``: None or ``"memory"`` for in-memory tables,
    ``redis://[:password@]host:port[/db]`` (or ``rediss://``) for Redis,
    with this cluster's tables under ``namespace``.

    Raises ``ValueError`` for any other URL, ``ImportError`` when the Redis
    client is not installed, ``ConnectionError`` when Redis cannot be reached.
    """
    if not is_durable(url):
        return MemoryStorage()
    assert url is not None
    if url.startswith(("redis://", "rediss://")):
        from skate._private.gcs.redis_storage import RedisStorage

        return RedisStorage(url, namespace)
    raise ValueError(
        f"unsupported control store storage {url!r}: use 'memory' (the default) or redis://HOST:PORT"
    )


class Table:
    """One table: records cached in memory, every change written to ``storage``."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self._rows: dict = dict(storage.items(name))

    def get(self, key: Hashable) -> Any:
        return self._rows.get(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def set(self, key: Hashable, value: Any) -> None:
        """Stores ``value`` (also after changing a record in place)."""
        self._rows[key] = value
        self.storage.put(self.name, key, value)

    def delete(self, key: Hashable) -> Any:
        """Removes a record; returns it (or None)."""
        value = self._rows.pop(key, None)
        if value is not None:
            self.storage.delete(self.name, key)
        return value

    def items(self) -> list[tuple[Hashable, Any]]:
        return list(self._rows.items())

    def values(self) -> list[Any]:
        return list(self._rows.values())

    def trim(self, is_done: Any, keep: int, when: str) -> list:
        """Deletes the oldest finished records beyond ``keep`` (bounded history).

        ``is_done(record)`` says whether a record is finished; ``when`` names
        the record field holding the time it finished.  Returns the deleted keys.
        """
        done = [(r.get(when) or 0.0, k) for k, r in self._rows.items() if is_done(r)]
        if len(done) <= keep:
            return []
        done.sort(key=lambda p: p[0])
        gone = [k for _, k in done[: len(done) - keep]]
        for k in gone:
            self.delete(k)
        return gone
