"""Publish/subscribe channels of the control store.

::

    subscribe(conn, ["node", "logs"])     a node daemon or driver listens
    publish("logs", batch)   -->  notify("pub", ["logs", batch]) to each subscriber

Channels: ``node`` (a node joined or died), ``resources`` (a node's free
resources changed), ``actor`` (an actor's record changed), ``logs`` (worker
output for drivers).  A subscriber is dropped when its connection closes.
"""

from __future__ import annotations

from typing import Any


class PubSub:
    """Subscribers per channel."""

    def __init__(self) -> None:
        self.subs: dict[str, set[Any]] = {}
        #: Messages sent to subscribers so far (``gcs_stats``).
        self.sent = 0

    def subscribe(self, conn: Any, channels: list[str]) -> None:
        for ch in channels:
            self.subs.setdefault(ch, set()).add(conn)
        conn.on_close.append(self.unsubscribe)

    def unsubscribe(self, conn: Any) -> None:
        for subs in self.subs.values():
            subs.discard(conn)

    def publish(self, channel: str, msg: Any) -> None:
        subs = list(self.subs.get(channel, ()))
        self.sent += len(subs)
        for conn in subs:
            conn.notify("pub", [channel, msg])
