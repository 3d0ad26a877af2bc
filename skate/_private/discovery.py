"""Finding the cluster to join, in Ray's order, and asking its control store one thing.

``init(address)``, ``skate status`` and ``skate start --address`` resolve an
address the same way (``resolve_address``):

1. an explicit ``"host:port"`` is used as given;
2. with no address, or ``"auto"``: ``SKATE_ADDRESS`` or ``RAY_ADDRESS`` when
   set (either may itself say ``"auto"`` or ``"local"``);
3. then the most recently started ``skate start`` cluster on this machine
   whose control store is alive (``node.latest_cluster``);
4. then nothing: ``None`` (start a new embedded cluster) for no address, or
   ConnectionError for ``"auto"``.  ``"local"`` always means a new cluster.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from skate._private import node, private_paths, wire
from skate._private.gcs.client import gcs_target

ENV_VARS = ("SKATE_ADDRESS", "RAY_ADDRESS")

NOT_FOUND = (
    "Could not find any running skate instance. Please specify the one to connect to by "
    "setting the `--address` flag or `SKATE_ADDRESS`/`RAY_ADDRESS` environment variable "
    "(start one with `skate start --head`)."
)


def env_address() -> str | None:
    """The address named by SKATE_ADDRESS, else RAY_ADDRESS (None when neither is set)."""
    for var in ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def check_address(address: str) -> str:
    """Validates a ``host:port`` address; returns it normalized.

    Raises:
        ValueError: for anything but ``host:port`` with a port in 1..65535
            (``ray://`` client addresses included: skate has no client server).
    """
    if address.startswith("ray://") or "://" in address:
        raise ValueError(
            f"address {address!r}: skate joins a cluster by its control store's HOST:PORT; "
            "client (ray://) addresses are not supported"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"malformed address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    if host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{int(port)}"


def resolve_address(address: str | None) -> str | None:
    """The control-store address to join, or None to start a new cluster (see module doc).

    Raises:
        ConnectionError: ``"auto"`` (given or from the environment) and no live cluster here.
        ValueError: a malformed address.
    """
    if address is None or address == "auto":
        address = env_address() or address
    if address == "local":
        return None
    if address is None or address == "auto":
        rec = node.latest_cluster()
        if rec is not None:
            return rec["gcs_address"]
        if address is None:
            return None
        raise ConnectionError(NOT_FOUND)
    return check_address(address)


@dataclass
class Cluster:
    """What a process on this machine needs to talk to a cluster."""

    gcs_address: str
    token: bytes
    #: This machine's session folder of the cluster (None: not started here).
    session_dir: str | None


def credentials(gcs_address: str, token_hex: str | None = None) -> Cluster:
    """The token for ``gcs_address``: given, SKATE_CLUSTER_TOKEN, else this machine's record.

    Raises:
        ConnectionError: when no token can be found.
    """
    rec = node.lookup_cluster(gcs_address)
    token_hex = token_hex or os.environ.get("SKATE_CLUSTER_TOKEN")
    if token_hex:
        token = token_hex.strip().encode()
    elif rec is not None:
        token = private_paths.read_token(rec["token_file"])
    else:
        raise ConnectionError(
            f"no token for the cluster at {gcs_address}: set SKATE_CLUSTER_TOKEN "
            "(printed by `skate start --head`)"
        )
    return Cluster(gcs_address, token, rec["session_dir"] if rec else None)


async def _request(address: Any, token: bytes, method: str, body: Any, timeout: float, expect: bytes | None) -> Any:
    conn = await asyncio.wait_for(wire.connect(address, token, {}, expect=expect), timeout)
    try:
        return await asyncio.wait_for(conn.request(method, body), timeout)
    finally:
        conn.close()


def request(
    address: Any, token: bytes, method: str, body: Any = None, timeout: float = 10.0, expect: bytes | None = None,
    fallback: Any = None,
) -> Any:
    """One request to a daemon (control store or node daemon) from a process with no runtime.

    ``expect``: the identity the daemon must prove (``wire.GCS_IDENTITY``, a node id).
    ``fallback``: where to try when ``address`` (a Unix socket) cannot be
    reached: its TCP address (a restarting control store's port keeps
    connections in its backlog; its Unix socket refuses them).

    Raises:
        ConnectionError: one line saying whether the peer was unreachable or
            rejected the token.
    """
    where = address if isinstance(address, str) else ":".join(map(str, address))
    try:
        return asyncio.run(_request(address, token, method, body, timeout, expect))
    except wire.AuthError as e:
        if "not the expected" in str(e):
            raise ConnectionError(f"{where} is not the skate endpoint asked for: {e}") from None
        raise ConnectionError(
            f"the cluster at {where} rejected this process's token; check SKATE_CLUSTER_TOKEN"
        ) from None
    except (OSError, EOFError, asyncio.TimeoutError) as e:
        if fallback is not None and fallback != address:
            return request(fallback, token, method, body, timeout, expect)
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise ConnectionError(f"cannot reach a skate cluster at {where}: {why}") from None


def request_gcs(cluster: Cluster, method: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One request to ``cluster``'s control store: through its Unix socket when
    it runs on this host (else, or when the socket refuses, its TCP port).

    Raises:
        ConnectionError: as ``request``.
    """
    return request(gcs_target(cluster.gcs_address, cluster.session_dir), cluster.token, method, body, timeout,
                   wire.GCS_IDENTITY, fallback=cluster.gcs_address)
