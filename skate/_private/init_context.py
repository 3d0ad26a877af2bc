"""What ``init()`` returns: a ``RayContext`` (follows Ray's), and the line it logs.

Ray's ``init`` returns a context with the dashboard's address, the
cluster's addresses and versions, usable as a context manager (``with
ray.init(): ...`` shuts down at the end).  skate's also answers the
driver's ``get_runtime_context()`` accessors (``ctx.get_node_id()``,
``ctx.gcs_address``), as earlier skate versions returned that object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from skate._private import dashboard_launch

log = logging.getLogger("skate")


class RayContext:
    """The context ``init()`` returns (follows Ray's ``RayContext``).

    Attributes:
        dashboard_url: The dashboard link, credential included
            (``http://127.0.0.1:8265/?token=...``), or None when the cluster
            has no dashboard.  (Ray gives ``host:port``; skate's dashboard
            refuses requests without the credential, so the link carries it.)
        address_info: ``node_ip_address``, ``gcs_address``, ``address``,
            ``session_dir``, ``webui_url`` (the same link) and ``node_id``.
        python_version, ray_version, ray_commit: Of this process's skate.
    """

    def __init__(self, core: Any, dashboard_url: str | None, shutdown: Callable[[], None]) -> None:
        from skate import __version__
        from skate.runtime_context import RuntimeContext

        self._runtime = RuntimeContext(core)
        self._shutdown = shutdown
        self.dashboard_url = dashboard_url
        self.python_version = "{}.{}.{}".format(*sys.version_info[:3])
        self.ray_version = __version__
        self.ray_commit = ""
        self.address_info = {
            "node_ip_address": getattr(core, "node_ip", None) or "127.0.0.1",
            "gcs_address": core.gcs_address,
            "address": core.gcs_address,
            "session_dir": core.session_dir,
            "webui_url": dashboard_url,
            "node_id": core.node_id.hex() if isinstance(core.node_id, bytes) else core.node_id,
        }

    def __getitem__(self, key: str) -> Any:
        """Old dict-style access (``ctx["webui_url"]``), like Ray's."""
        return self.address_info[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.address_info.get(key, default)

    def __getattr__(self, name: str) -> Any:
        # Everything else: the driver's runtime context (get_node_id(), gcs_address, ...).
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._runtime, name)

    def __enter__(self) -> RayContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Shuts this process's connection down (``shutdown()``)."""
        self._shutdown()

    def __repr__(self) -> str:
        return f"RayContext(dashboard_url={self.dashboard_url!r}, gcs_address={self.address_info['gcs_address']!r})"


def announce(core: Any, token: bytes, head: dict | None, shutdown: Callable[[], None]) -> RayContext:
    """The context for a driver that just connected; logs where the dashboard is (like Ray)."""
    if head is not None:
        where = head.get("dashboard")
        url = dashboard_launch.link(where, token) if where else None
        if where:  # where drivers that join this cluster find it
            core.gcs_call("kv_put", [dashboard_launch.KV_NAMESPACE, dashboard_launch.KV_KEY, True], [where.encode()])
        head["dashboard_url"] = url
        what = "Started a local skate instance."
    else:
        where = dashboard_launch.lookup(core)
        url = dashboard_launch.link(where, token) if where else None
        what = f"Connected to skate cluster at {core.gcs_address}."
    if url:
        log.info("%s View the dashboard at %s", what, url)
    else:
        log.info("%s", what)
    return RayContext(core, url, shutdown)
