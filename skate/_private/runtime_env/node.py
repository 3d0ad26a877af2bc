"""The node daemon's side of runtime environments: packages fetched and unpacked once.

Before the zygote forks a worker for an environment, the node daemon calls
``NodeEnvs.prepare``: it fetches the environment's packages from the
control store (once per package and node; concurrent starts wait for the
same fetch), unpacks them into the node's cache folder, and returns the
*setup* the forked child applies before any user code runs (see
``worker_setup.apply``)::

    {"env_vars": {...}, "cwd": "<cache>/_skate_pkg_<h>", "sys_path": [...], "json": "<the env>"}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from skate._private.runtime_env import packaging, spec


def kv_value(reply: Any) -> bytes | None:
    """The value in a ``kv_get`` reply (``found`` alone, or ``(found, [value])``)."""
    if isinstance(reply, tuple):
        found, bufs = reply
        return bytes(bufs[0]) if found and bufs else None
    return None


class SetupError(Exception):
    """An environment could not be prepared on this node (the message says why)."""


class NodeEnvs:
    """Prepared environments of one node daemon."""

    def __init__(self, cache_dir: str, fetch: Callable[[str], Awaitable[bytes | None]]) -> None:
        """``fetch(uri)``: the package's bytes from the control store, or None."""
        self.cache_dir = cache_dir
        self.fetch = fetch
        self._unpacking: dict[str, asyncio.Future] = {}

    async def _local(self, uri: str) -> str:
        found = packaging.unpacked_path(self.cache_dir, uri)
        if found is not None:
            return found
        fut = self._unpacking.get(uri)
        if fut is None:
            fut = self._unpacking[uri] = asyncio.ensure_future(self._download(uri))
            fut.add_done_callback(lambda _f, uri=uri: self._unpacking.pop(uri, None))
        return await asyncio.shield(fut)

    async def _download(self, uri: str) -> str:
        data = await self.fetch(uri)
        if data is None:
            raise SetupError(f"the package {uri} is not in the cluster's key-value store")
        return await asyncio.to_thread(packaging.unpack, uri, data, self.cache_dir)

    async def prepare(self, resolved: dict) -> dict:
        """The setup a worker for ``resolved`` applies at start (see the module docstring).

        Raises:
            SetupError: a package is missing or bad, or it took longer than
                ``config.setup_timeout_seconds``.
        """
        try:
            return await asyncio.wait_for(self._prepare(resolved), spec.setup_timeout(resolved))
        except asyncio.TimeoutError:
            raise SetupError(
                f"setting up the runtime_env took longer than its setup_timeout_seconds "
                f"({spec.setup_timeout(resolved):g} s)"
            ) from None
        except (packaging.PackagingError, SetupError) as e:
            raise SetupError(str(e)) from e
        except Exception as e:  # a lost control store, a full disk, ...: the lease must still be answered
            raise SetupError(f"{type(e).__name__}: {e}") from e

    async def _prepare(self, resolved: dict) -> dict:
        out: dict = {"json": json.dumps(resolved, sort_keys=True)}
        if resolved.get("env_vars"):
            out["env_vars"] = resolved["env_vars"]
        sys_path = []
        wd = resolved.get("working_dir")
        if wd:
            out["cwd"] = packaging.package_root(await self._local(wd))
            sys_path.append(out["cwd"])
        for uri in resolved.get("py_modules") or ():
            sys_path.append(await self._local(uri))
        if sys_path:
            out["sys_path"] = sys_path
        return out
