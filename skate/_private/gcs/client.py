"""A client's link to the control store that lives through its restarts.

::

    request/notify --> GcsClient --> wire.Connection --> control store
                          |   connection lost
                          |   durable store: redial with backoff for up to
                          |   CONFIG.gcs_reconnect_timeout_s; meanwhile
                          |   requests wait, notifications queue
                          v
                     reconnected: on_reconnect (re-register), replay the
                     subscriptions, send the queued notifications, resume

With in-memory tables a restarted control store would know nothing of this
client, so a lost connection is final at once (``on_lost``).  Node daemons,
workers and drivers all hold one ``GcsClient``.

A client on the control store's own host dials its Unix socket
(``gcs_socket``, in the session folder) rather than its TCP port: no
records to seal and open, and no TLS-grade cipher library loaded in a
process that never leaves its host.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from skate._private import hostaddr, wire
from skate._private.config import CONFIG

log = logging.getLogger(__name__)

#: Requests whose effect lives on the connection, made again on a new one.
_REPLAYED = ("subscribe",)


def gcs_socket(session_dir: str) -> str:
    """The control store's Unix socket in a session folder (its host's clients dial it)."""
    return os.path.join(session_dir, "gcs.sock")


def gcs_target(address: str, session_dir: str | None) -> Any:
    """Where to dial the control store at ``address``: its Unix socket when it
    runs on this host and ``session_dir`` (its session folder) has one, else
    ``address``."""
    if not session_dir:
        return address
    host, port = wire.split_address(address)
    return hostaddr.local_target(gcs_socket(session_dir), host, port)


class GcsUnavailableError(ConnectionError):
    """The control store could not be reached within the reconnect grace period."""


class GcsClient:
    """Requests and notifications to the control store, across its restarts.

    Use on the event loop's thread, except ``notify`` (any thread).
    """

    def __init__(
        self,
        address: str,
        token: bytes,
        handlers: dict,
        on_reconnect: Callable[[GcsClient], Awaitable[None]] | None = None,
        on_lost: Callable[[str], None] | None = None,
        session_dir: str | None = None,
    ) -> None:
        """``session_dir``: this process's session folder, where the control
        store of this host (if it is this host's) has its Unix socket."""
        self.address = address
        self.session_dir = session_dir
        self.token = token
        self.handlers = handlers
        self.on_reconnect = on_reconnect
        self.on_lost = on_lost
        self.conn: wire.Connection | None = None
        self.durable = False
        self.closing = False
        self.given_up = False
        self.reconnects = 0
        self.replays: list[tuple[str, Any]] = []
        self.queued: collections.deque = collections.deque(maxlen=100_000)
        self._up = asyncio.Event()
        self._redial: asyncio.Task | None = None
        self.job: dict | None = None  # a driver's job, reattached after a restart

    @property
    def closed(self) -> bool:
        """True while no connection is up."""
        return self.conn is None or self.conn.closed

    async def connect(self, timeout: float = 15.0) -> GcsClient:
        """Makes the first connection, retrying while the control store starts.

        Raises ``ConnectionError`` (or ``AuthError``) when it cannot.
        """
        conn = await self._dial(time.monotonic() + timeout)
        self.durable = bool((await conn.request("gcs_info"))["durable"])
        self._attach(conn)
        return self

    async def _dial(self, deadline: float) -> wire.Connection:
        delay = 0.005
        while True:
            left = deadline - time.monotonic()
            try:
                target = gcs_target(self.address, self.session_dir)
                return await wire.connect(
                    target, self.token, self.handlers, timeout=max(min(left, 10.0), 0.05), expect=wire.GCS_IDENTITY
                )
            except wire.AuthError:
                raise
            except (OSError, asyncio.TimeoutError) as e:
                if time.monotonic() + delay > deadline:
                    raise GcsUnavailableError(f"cannot reach the control store at {self.address}: {e!r}") from None
            await asyncio.sleep(delay)
            # A refused Unix socket (the control store restarting) is tried
            # often: nothing holds connections in a backlog meanwhile, as the
            # supervisor does for the TCP port, and a local try costs little.
            local = self.session_dir is not None and target == gcs_socket(self.session_dir)
            delay = min(delay * 2, 0.02 if local else 0.5)

    def _attach(self, conn: wire.Connection) -> None:
        self.conn = conn
        conn.on_close.append(self._lost)
        self._up.set()

    def _lost(self, conn: wire.Connection) -> None:
        if conn is not self.conn or self.closing:
            return
        self._up.clear()
        if not self.durable:
            self._give_up("the control store closed its connection")
            return
        log.warning("lost the control store at %s; reconnecting", self.address)
        if self._redial is None or self._redial.done():
            self._redial = asyncio.ensure_future(self._reconnect())

    def _give_up(self, why: str) -> None:
        self.given_up = True
        self._up.set()  # waiters wake and fail
        if self.on_lost is not None and not self.closing:
            self.on_lost(why)

    async def _reconnect(self) -> None:
        deadline = time.monotonic() + CONFIG.gcs_reconnect_timeout_s
        while not self.closing:
            try:
                conn = await self._dial(deadline)
                for method, body in self.replays:
                    await conn.request(method, body)
                if self.job is not None:
                    await conn.request("new_job", self.job)
                self.conn = conn
                if self.on_reconnect is not None:
                    await self.on_reconnect(self)
            except (wire.ConnectionLost, OSError, asyncio.TimeoutError) as e:
                if isinstance(e, GcsUnavailableError) or time.monotonic() > deadline:
                    self._give_up(f"the control store did not come back within {CONFIG.gcs_reconnect_timeout_s}s")
                    return
                await asyncio.sleep(0.1)
                continue
            except Exception as e:  # noqa: BLE001 - refused (e.g. this node was declared dead)
                self._give_up(f"the restarted control store refused this process: {e}")
                return
            self.reconnects += 1
            conn.on_close.append(self._lost)
            while self.queued and not conn.closed:
                method, body, bufs = self.queued.popleft()
                conn.notify(method, body, bufs)
            self._up.set()
            log.warning("reconnected to the control store at %s", self.address)
            return

    async def wait_up(self) -> wire.Connection:
        """The live connection, once there is one; raises ``GcsUnavailableError`` after giving up."""
        while True:
            if self.given_up or self.closing:
                raise GcsUnavailableError(f"the control store at {self.address} is gone")
            conn = self.conn
            if conn is not None and not conn.closed and self._up.is_set():
                return conn
            await self._up.wait()
            if conn is self.conn and self.conn is not None and self.conn.closed and not self.given_up:
                await asyncio.sleep(0.01)  # closed, and _lost has not run yet

    async def request(self, method: str, body: Any = None, bufs: Any = ()) -> Any:
        """A request; with a durable store it waits out a restart and is sent again if its
        connection died before the answer (so requests should be safe to repeat).
        """
        while True:
            conn = await self.wait_up()
            try:
                result = await conn.request(method, body, bufs)
            except wire.ConnectionLost:
                if not self.durable or self.closing:
                    raise
                continue
            if method in _REPLAYED:
                self.replays.append((method, body))
            elif method == "new_job" and isinstance(result, int):
                self.job = dict(body, job_id=result)
            return result

    def notify(self, method: str, body: Any = None, bufs: Any = (), droppable: bool = False) -> None:
        """A one-way message (any thread); while the store is away it is queued
        (unless ``droppable``, e.g. a heartbeat) and sent after reconnecting.
        """
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.notify(method, body, bufs)
        elif not droppable and self.durable and not self.given_up:
            self.queued.append((method, body, bufs))

    def close(self) -> None:
        """Closes the connection for good."""
        self.closing = True
        if self._redial is not None:
            self._redial.cancel()
        if self.conn is not None:
            self.conn.close()
        self._up.set()
