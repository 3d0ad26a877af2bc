"""The keywords of ``init``: which skate honours, and a clear error for the rest.

``init`` takes every keyword of Ray 2.60's ``ray.init`` so Ray programs run
unchanged; those asking for something skate does not do are rejected here
with ``NotImplementedError`` rather than ignored.  Old keywords of early Ray
releases (seen in old programs and tutorials) are accepted only at values
that change nothing.
"""

from __future__ import annotations

import logging
from typing import Any

# Ray keyword -> (is this value a no-op?, what skate lacks)
_RAY_KEYWORDS: dict[str, tuple[Any, str]] = {
    "labels": (lambda v: not v, "node labels are not implemented"),
    "local_mode": (lambda v: not v, "local_mode is not implemented (tasks always run in worker processes)"),
    "job_config": (lambda v: v is None, "JobConfig is not implemented"),
    "logging_config": (lambda v: v is None, "LoggingConfig is not implemented; use logging_level/logging_format"),
    "enable_resource_isolation": (lambda v: not v, "resource isolation (cgroups) is not implemented"),
    "cgroup_path": (lambda v: v is None, "resource isolation (cgroups) is not implemented"),
    "system_reserved_cpu": (lambda v: v is None, "resource isolation (cgroups) is not implemented"),
    "system_reserved_memory": (lambda v: v is None, "resource isolation (cgroups) is not implemented"),
    "proxy_server_url": (lambda v: v is None, "Ray Client proxies are not implemented"),
    "_system_config": (lambda v: not v, "internal system settings have no skate equivalent; use SKATE_* environment variables"),
    "_temp_dir": (lambda v: v is None, "set the SKATE_TEMP_DIR environment variable instead"),
    "_enable_object_reconstruction": (lambda v: not v, "lineage reconstruction is not implemented"),
    "storage": (lambda v: v is None, "cluster storage is not implemented"),
    "log_to_file": (lambda v: not v, "logging to files is not implemented"),
}

# Keywords of early Ray releases: the values that change nothing.
_LEGACY: dict[str, tuple] = {
    "node_ip_address": (None,),
    "_node_ip_address": (None,),
    "object_id_seed": (None,),
    "num_workers": (None,),
    "driver_mode": (None, 0),
    "redirect_worker_output": (None, False),
    "redirect_output": (None, True),
    "num_custom_resource": (None,),
    "num_redis_shards": (None,),
    "redis_max_clients": (None,),
    "plasma_directory": (None,),
    "_plasma_directory": (None,),
    "huge_pages": (None, False),
    "include_webui": (None, False),
    "use_raylet": (None, True, False),
}


def check(address: str | None, ray_keywords: dict, kwargs: dict) -> tuple[str | None, float | None, str | None]:
    """Validates ``init``'s keywords.

    Args:
        address: ``init``'s ``address``.
        ray_keywords: The named Ray keywords skate does not act on, with their values.
        kwargs: ``init``'s ``**kwargs``.

    Returns:
        ``(address, memory, token)``: ``address`` (or ``redis_address``), the
        ``_memory`` and ``_token`` values.

    Raises:
        TypeError: an unknown keyword.
        NotImplementedError: a value asking for something skate does not do.
    """
    extra = dict(kwargs)
    redis_address = extra.pop("redis_address", None)
    memory = extra.pop("_memory", None)
    token = extra.pop("_token", None)
    if address is None and redis_address is not None:
        address = redis_address
    for key, value in list(ray_keywords.items()) + list(extra.items()):
        rule = _RAY_KEYWORDS.get(key)
        if rule is not None:
            if not rule[0](value):
                raise NotImplementedError(f"skate does not support init({key}={value!r}) yet: {rule[1]}.")
            continue
        legacy = _LEGACY.get(key)
        if legacy is None:
            raise TypeError(f"init() got an unexpected keyword argument {key!r}")
        if not any(value is ok or (ok is not None and value == ok and type(value) is type(ok)) for ok in legacy):
            raise NotImplementedError(
                f"skate does not support init({key}={value!r}): an option of early Ray releases that skate "
                f"accepts only as {' or '.join(repr(v) for v in legacy)}."
            )
    return address, memory, token


def check_dashboard_join(include_dashboard: bool | None, host: str, port: int | None) -> None:
    """Dashboard keywords when joining a running cluster: its head has (or has not) a dashboard already.

    Raises:
        ValueError: asking for a dashboard, a host or a port (give them to ``skate start --head``).
    """
    if include_dashboard or host != "127.0.0.1" or port is not None:
        raise ValueError(
            "include_dashboard, dashboard_host and dashboard_port apply to a new cluster; when connecting to "
            "an existing one, give them to `skate start --head` instead"
        )


_HANDLER_NAME = "skate-init"


def configure_logging(level: int | str, fmt: str | None) -> None:
    """Sets the ``skate`` logger's level and, once, a stderr handler with ``fmt``.

    Raises:
        ValueError: an unknown level name.
    """
    if isinstance(level, str):
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown logging_level {level!r}")
        level = value
    logger = logging.getLogger("skate")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(logging.Formatter(fmt or "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
