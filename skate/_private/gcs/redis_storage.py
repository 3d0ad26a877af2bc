"""A ``Storage`` in Redis: the control store's tables survive its restarts.

::

    Table("actors").set(aid, record)
        --> HSET <prefix>:actors  msgpack(aid)  msgpack(record)

Each table is one Redis hash under a prefix of its own per cluster (derived
from the cluster token, so two clusters can share one Redis and a fresh
cluster never reads an old one's tables).  Keys and records are msgpack:
nothing read back from Redis is ever unpickled.  Calls are synchronous
round trips (tens of microseconds on a local Redis); every change is
written before the request that made it is answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator
from typing import Any

import msgspec

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _tuplify(key: Any) -> Hashable:
    """Keys come back from msgpack with tuples as lists; makes them hashable again."""
    if isinstance(key, list):
        return tuple(_tuplify(k) for k in key)
    return key


class RedisStorage:
    """Tables as Redis hashes (``redis://[:password@]host:port[/db]``).

    Raises ``ImportError`` (with what to install) when the ``redis`` client
    is missing, and ``ConnectionError`` when Redis cannot be reached.
    """

    def __init__(self, url: str, namespace: str) -> None:
        try:
            import redis
        except ImportError:
            raise ImportError(
                "the Redis control-store backend needs the redis client: pip install 'skate[redis]'"
            ) from None
        self.url = url
        self.prefix = f"skate:{namespace}:"
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, retry_on_timeout=True)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConnectionError(f"cannot reach the control store's Redis at {url}: {e}") from None

    def _hash(self, table: str) -> str:
        return self.prefix + table

    def get(self, table: str, key: Hashable) -> Any:
        raw = self.client.hget(self._hash(table), _encode(key))
        return None if raw is None else _decode(raw)

    def put(self, table: str, key: Hashable, value: Any) -> None:
        self.client.hset(self._hash(table), _encode(key), _encode(value))

    def delete(self, table: str, key: Hashable) -> bool:
        return bool(self.client.hdel(self._hash(table), _encode(key)))

    def items(self, table: str) -> Iterator[tuple[Hashable, Any]]:
        rows = self.client.hgetall(self._hash(table))
        return iter([(_tuplify(_decode(k)), _decode(v)) for k, v in rows.items()])

    def drop_all(self) -> None:
        """Deletes every table of this cluster (its namespace) from Redis."""
        keys = list(self.client.scan_iter(match=self.prefix + "*"))
        if keys:
            self.client.delete(*keys)

    def close(self) -> None:
        self.client.close()


def namespace_for(token: bytes) -> str:
    """The key prefix of a cluster: a digest of its token (not the token)."""
    return hashlib.sha256(b"skate-gcs-namespace:" + token).hexdigest()[:16]
