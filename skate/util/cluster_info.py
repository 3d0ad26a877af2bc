"""Cluster look-ups of ``skate.util``: named actors and this node's IP (follows Ray)."""

from __future__ import annotations

import socket

from skate._private import runtime


def list_named_actors(all_namespaces: bool = False) -> list:
    """The named actors that are alive (or still starting), like Ray's.

    Detached and non-detached actors are both listed; dead ones are not.

    Args:
        all_namespaces: List every namespace's named actors instead of only
            the current namespace's.

    Returns:
        A list of names (``str``) when ``all_namespaces`` is False, else a
        list of ``{"name": str, "namespace": str}`` dicts.
    """
    core = runtime.current()
    rows = core.gcs_call(
        "list_named_actors", {"namespace": core.namespace, "all_namespaces": bool(all_namespaces)}
    )
    if all_namespaces:
        return [{"name": r["name"], "namespace": r["namespace"]} for r in rows]
    return [r["name"] for r in rows]


def get_node_ip_address(address: str | None = None) -> str:
    """The IP address of the node this process runs on (follows Ray).

    Connected to a cluster, this is the address the node's daemon and
    workers listen on.  Not connected, it is the local address the operating
    system would use to reach ``address`` (a UDP ``connect``: nothing is
    sent), or ``"127.0.0.1"`` when no route exists.

    Args:
        address: ``"host:port"`` whose route picks the interface when this
            process is not connected to a cluster (default ``"8.8.8.8:53"``,
            as in Ray; nothing is sent).

    Returns:
        An IPv4 or IPv6 address, as a string.
    """
    core = runtime.current_or_none()
    if core is not None:
        return core.node_ip
    host, _, port = (address or "8.8.8.8:53").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, int(port or 53)))
            return s.getsockname()[0]
    except (OSError, ValueError):
        return "127.0.0.1"


__all__ = ["get_node_ip_address", "list_named_actors"]
