"""Starting the dashboard process of a head, and the credential its link carries.

::

    init() / skate start --head           dashboard process (python -m skate.dashboard)
      binds 127.0.0.1:8265 (or the next     serves the page, /api/* and /metrics on
      free port) and hands the socket  -->  that socket; asks the control store and
      over; prints the link at once         the node daemons for what it shows

The head does not wait for the dashboard to be ready: the socket listens
before the process starts, so a browser that follows the link at once is
answered as soon as the process is up.  ``skate start --head`` starts the
process at once (the command exits); ``init()`` of an embedded cluster
starts it only when the first client connects (``LazyDashboard``: a
thread of the driver waits on the socket), so an idle embedded cluster has
no dashboard process at all.  The process imports its web server only when
the first client connects (see ``skate/dashboard/__main__.py``), runs at
a lower CPU priority, dies with the head (an embedded cluster's driver, or
``skate stop``) and exits when the control store goes away.

Access needs a credential derived from the cluster token (an HMAC of it,
never the token itself): the link carries it once, and the page trades it
for an HttpOnly cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import select
import socket
import threading
from typing import Any

from skate._private import node
from skate._private.config import CONFIG

#: Ray's default dashboard port.
DEFAULT_PORT = 8265
#: Key of the dashboard's address in the control store's key-value table.
KV_NAMESPACE = b"skate_dashboard"
KV_KEY = b"address"


def available() -> bool:
    """True when the dashboard's dependencies (``skate[dashboard]``) are installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("aiohttp", "prometheus_client"))


def credential(token: bytes) -> str:
    """The dashboard credential of a cluster: an HMAC-SHA256 of its token (hex).

    Knowing it opens the dashboard; it does not reveal the token, and no
    other skate endpoint accepts it.
    """
    return hmac.new(token, b"skate-dashboard-credential-v1", hashlib.sha256).hexdigest()


def link(address: str, token: bytes) -> str:
    """The dashboard link (``http://host:port/?token=<credential>``) for a dashboard at ``address``."""
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/?token={credential(token)}"


def want(include_dashboard: bool | None, what: str) -> bool:
    """Whether to start a dashboard: ``include_dashboard`` when given, else ``SKATE_INCLUDE_DASHBOARD``
    when set, else when its dependencies are installed (like Ray's default).

    Raises:
        RuntimeError: ``include_dashboard=True`` without the dependencies.
    """
    if include_dashboard is None:
        default = CONFIG.include_dashboard.strip().lower()
        if default in ("0", "false", "no"):
            return False
        include_dashboard = True if default in ("1", "true", "yes") else None
    if include_dashboard is None:
        return available()
    if include_dashboard and not available():
        raise RuntimeError(
            f"{what}: the dashboard needs aiohttp and prometheus_client: pip install 'skate[dashboard]'"
        )
    return bool(include_dashboard)


def bind(host: str | None = None, port: int | None = None) -> socket.socket:
    """The dashboard's listening socket, bound before anything else starts (so a busy port fails first).

    Args:
        host: Address to listen on (default 127.0.0.1: this machine only).
        port: Port (default: 8265, or any free port when 8265 is taken).

    Raises:
        ConnectionError: ``host:port`` cannot be listened on (an explicit port in use).
    """
    host = host or "127.0.0.1"
    if port is not None:
        return node.bind_listener(host, port)
    try:
        return node.bind_listener(host, DEFAULT_PORT)
    except ConnectionError:
        return node.bind_listener(host, 0)


def start(head: dict, listener: socket.socket, tie_to_parent: bool = True,
          detach: bool | None = None) -> tuple[node.DaemonProcess, str]:
    """Starts the dashboard process of a head started by ``node.start_head``, on ``listener`` (closed here).

    Returns:
        ``(process, address)``; ``address`` is ``host:port``.
    """
    try:
        host, bound = listener.getsockname()[:2]
        address = f"{host}:{bound}"
        proc = node.spawn(
            "dashboard",
            ["skate.dashboard", "--gcs-address", head["gcs_address"], "--token-file", head["token_file"],
             "--listen-fd", str(listener.fileno()), "--address", address, "--session-dir", head["session_dir"],
             "--gcs-pid", str(head["processes"][0].proc.pid)],
            tie_to_parent=tie_to_parent,
            pass_fds=(listener.fileno(),),
            logs_dir=head["logs_dir"],
            log_name="dashboard",
            detach=detach,
        )
    finally:
        listener.close()
    os.close(proc.ready_fd)  # type: ignore[attr-defined]  # never waited for: see the module doc
    return proc, address


def address_of(listener: socket.socket) -> str:
    """``host:port`` a listening socket is bound to."""
    host, port = listener.getsockname()[:2]
    return f"{host}:{port}"


class LazyDashboard:
    """An embedded cluster's dashboard: the process starts when the first
    client connects to ``listener`` (held in the socket's backlog meanwhile).

    Until then this process holds the socket and one thread of it waits on
    it; ``close()`` (the head's shutdown) ends that wait.  The process, once
    started, joins ``head["processes"]`` (stopped with the head).
    """

    def __init__(self, head: dict, listener: socket.socket) -> None:
        self.head = head
        self.listener = listener
        self.address = address_of(listener)
        self.proc: node.DaemonProcess | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._wait, name="skate-dashboard-launch", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        fd = self.listener.fileno()
        try:
            ready, _, _ = select.select([fd, self._wake_r], [], [])
        except (OSError, ValueError):
            return
        with self._lock:
            if self._closed or fd not in ready:
                return
            self.proc, _ = start(self.head, self.listener)  # (closes our copy of the socket)
            self.head["processes"].insert(0, self.proc)

    def close(self) -> None:
        """Stops waiting (the head stops); a started process is stopped with the head's."""
        with self._lock:
            self._closed = True
            os.write(self._wake_w, b"x")
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.proc is None:
            self.listener.close()


def announce(gcs_address: str, token: bytes, address: str, session_dir: str | None = None) -> None:
    """Records the dashboard's address in the control store, where drivers that join find it
    (``session_dir``: the cluster's session folder, for its control store's Unix socket)."""
    import asyncio

    from skate._private import wire
    from skate._private.gcs.client import gcs_target

    async def go() -> None:
        conn = await wire.connect(gcs_target(gcs_address, session_dir), token, {}, expect=wire.GCS_IDENTITY)
        try:
            await conn.request("kv_put", [KV_NAMESPACE, KV_KEY, True], [address.encode()])
        finally:
            conn.close()

    asyncio.run(go())


def lookup(core: Any) -> str | None:
    """The address of the cluster's dashboard (from the control store), or None when it has none."""
    try:
        reply = core.gcs_call("kv_get", [KV_NAMESPACE, KV_KEY])
    except Exception:  # noqa: BLE001  # an old or restarting control store: no link, nothing worse
        return None
    found, bufs = reply if isinstance(reply, tuple) else (reply, [])
    if not found or not bufs:
        return None
    return bytes(bufs[0]).decode()
