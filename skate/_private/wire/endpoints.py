"""Listening and connecting: servers hand each accepted socket to a new
server-side ``Connection``; ``connect`` makes a client-side one and waits for
the handshake.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from skate._private.config import CONFIG
from skate._private.wire.admission import Gate
from skate._private.wire.connection import Connection
from skate._private.wire.dispatch import ConnectionLost, Handler
from skate._private.wire.handshake import AuthError
from skate._private.wire.spin import ReadOn


def _server_side(
    token: bytes, handlers: dict[str, Handler], identity: bytes, read_on: ReadOn | None
) -> Callable[[], Connection]:
    gate = Gate(CONFIG.max_pending_handshakes)
    return lambda: Connection(token, handlers, server=True, gate=gate, identity=identity, read_on=read_on)


async def serve_tcp(
    host: str,
    port: int,
    token: bytes,
    handlers: dict[str, Handler],
    sock: socket.socket | None = None,
    identity: bytes = b"",
    read_on: ReadOn | None = None,
) -> asyncio.base_events.Server:
    """Starts a TCP server on ``host:port`` (port 0 picks a free one), or on a bound ``sock``.

    ``identity`` is what it proves it is to clients (a node or worker id);
    ``read_on``: a ``spin.ReadOn`` for its connections (a worker's exec endpoint).
    """
    loop = asyncio.get_running_loop()
    factory = _server_side(token, handlers, identity, read_on)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(factory, host, port, reuse_address=True)


async def serve_unix(
    path: str, token: bytes, handlers: dict[str, Handler], identity: bytes = b"", read_on: ReadOn | None = None
) -> asyncio.base_events.Server:
    """Starts a Unix-socket server at ``path`` (owner-only permissions); see ``serve_tcp``."""
    loop = asyncio.get_running_loop()
    if os.path.exists(path):
        os.unlink(path)
    srv = await loop.create_unix_server(_server_side(token, handlers, identity, read_on), path)
    os.chmod(path, 0o600)
    return srv


async def connect(
    address: str | tuple,
    token: bytes,
    handlers: dict[str, Handler] | None = None,
    timeout: float = 10.0,
    expect: bytes | None = None,
) -> Connection:
    """Connects to a ``"host:port"``, ``(host, port)`` or Unix socket path and authenticates.

    ``expect``: the identity the server must prove (None: any skate endpoint).
    A listener that closes the connection before it challenges (it holds its
    cap of unauthenticated connections) is tried again until ``timeout``.
    Raises ``AuthError`` when the server refuses the token, ``OSError`` or
    ``asyncio.TimeoutError`` when it cannot be reached.
    """
    loop = asyncio.get_running_loop()
    handlers = handlers if handlers is not None else {}
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        try:
            conn = await _connect_once(address, token, handlers, max(deadline - loop.time(), 0.001), expect)
        except BlockingIOError:
            # A Unix listener whose backlog is full (many processes connecting at once).
            if loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        try:
            await asyncio.wait_for(asyncio.shield(conn.ready), max(deadline - loop.time(), 0.001))
        except (asyncio.TimeoutError, ConnectionError) as e:
            challenged = conn.challenged
            conn.close()
            if isinstance(e, ConnectionLost):
                if not challenged and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise AuthError(
                    f"connection to {address} was refused during authentication: "
                    "is the cluster token right?"
                ) from None
            raise
        return conn


async def _connect_once(
    address: str | tuple, token: bytes, handlers: dict[str, Handler], timeout: float, expect: bytes | None
) -> Connection:
    loop = asyncio.get_running_loop()
    if isinstance(address, str) and address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address
    else:
        host, port = split_address(address)
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, target), timeout)
    except BaseException:
        sock.close()
        raise
    conn = Connection(token, handlers, server=False, expect=expect)
    conn.attach(sock)
    return conn


def split_address(address: str | tuple) -> tuple[str, int]:
    """``"host:port"`` or ``(host, port)`` as a tuple."""
    if isinstance(address, (tuple, list)):
        return address[0], int(address[1])
    host, _, port = address.rpartition(":")
    return host, int(port)
