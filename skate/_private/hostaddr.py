"""Addresses of this host: which one to bind, which peers are on this host.

A cluster spans several hosts.  Every process binds to an address of its
own host (a node daemon: its ``--node-ip-address``; a driver: the address
that routes to the control store) and reaches a peer on its own host
through the peer's Unix socket, any other peer over TCP.  A Unix socket
path that exists is not proof enough that its peer is on this host (a
shared file system, or network namespaces, show other hosts' sockets), so
a peer is local only when its IP address is one this host can bind.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any


@functools.lru_cache(maxsize=256)
def is_local(ip: str) -> bool:
    """True when ``ip`` is an address of this host (it can be bound here)."""
    if not ip:
        return False
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip.strip("[]"), 0))
        return True
    except OSError:
        return False


def route_ip(host: str, port: int = 9) -> str:
    """This host's address that routes to ``host`` (no packet is sent).

    A loopback ``host`` gives ``127.0.0.1``; no route at all gives
    ``127.0.0.1`` too.
    """
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def local_target(uds: str | None, ip: str, port: int) -> Any:
    """Where to connect to a peer: its Unix socket when it runs on this host, else ``(ip, port)``."""
    if uds and is_local(ip) and os.path.exists(uds):
        return uds
    return (ip, port)


def worker_port_range() -> tuple[int, int] | None:
    """The ``(min, max)`` TCP ports workers listen on (``--min/--max-worker-port``), or None: any."""
    lo, hi = os.environ.get("SKATE_MIN_WORKER_PORT"), os.environ.get("SKATE_MAX_WORKER_PORT")
    if not lo or not hi or (lo == "0" and hi == "0"):
        return None
    return int(lo), int(hi)


async def serve_in_range(serve: Callable[[int], Awaitable[Any]], ports: tuple[int, int] | None) -> Any:
    """Starts a server with ``serve(port)`` on a free port of ``ports`` (any port when None).

    Raises:
        OSError: ``EADDRINUSE`` when every port of the range is taken.
    """
    if ports is None:
        return await serve(0)
    lo, hi = ports
    candidates = list(range(lo, hi + 1))
    random.shuffle(candidates)
    for port in candidates:
        try:
            return await serve(port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"every worker port from {lo} to {hi} is in use (--min/--max-worker-port)")
