"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and defaults."""

from __future__ import annotations

from typing import Any

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "num_returns", "num_return_vals", "max_calls",
    "max_retries", "retry_exceptions", "scheduling_strategy", "runtime_env", "name", "accelerator_type",
    "object_store_memory", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "label_selector", "enable_task_events", "_metadata",
    "concurrency_group", "_generator_backpressure_num_objects",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "max_restarts", "max_task_retries", "max_concurrency",
    "name", "namespace", "lifetime", "scheduling_strategy", "runtime_env", "get_if_exists",
    "max_pending_calls", "accelerator_type", "object_store_memory", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks", "concurrency_groups",
    "label_selector", "enable_task_events", "_metadata", "allow_out_of_order_execution", "retry_exceptions",
}


def validate(options: dict, actor: bool) -> dict:
    """Checks option names and values; returns a normalized copy."""
    allowed = ACTOR_OPTIONS if actor else TASK_OPTIONS
    for key in options:
        if key not in allowed:
            kind = "actor" if actor else "task"
            raise ValueError(f"Invalid option keyword {key!r} for {kind}s. Valid ones are: {sorted(allowed)}")
    out = dict(options)
    if "num_return_vals" in out:
        out.setdefault("num_returns", out.pop("num_return_vals"))
    res = out.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError("resources must be a dict of resource name to amount")
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(
                    f"Use the 'num_cpus' and 'num_gpus' keywords instead of {k!r} in the 'resources' dict."
                )
            _check_amount(k, v)
    for k in ("num_cpus", "num_gpus", "memory"):
        if out.get(k) is not None:
            _check_amount(k, out[k])
    nr = out.get("num_returns")
    if nr is not None and not (isinstance(nr, int) and nr >= 0) and nr not in ("streaming", "dynamic"):
        raise ValueError(f"num_returns must be a non-negative integer, not {nr!r}")
    mr = out.get("max_retries")
    if mr is not None and (not isinstance(mr, int) or mr < -1):
        raise ValueError("max_retries must be an integer >= -1 (-1: retry forever)")
    mc = out.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise ValueError("max_concurrency must be a positive integer")
    for k in ("max_restarts", "max_task_retries"):
        v = out.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
            raise ValueError(f"{k} must be an integer >= -1 (-1: without limit), not {v!r}")
    if out.get("retry_exceptions") is not None:
        check_retry_exceptions(out["retry_exceptions"])
    mp = out.get("max_pending_calls")
    if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or mp == 0 or mp < -1):
        raise ValueError(f"max_pending_calls must be -1 (no limit) or a positive integer, not {mp!r}")
    groups = out.get("concurrency_groups")
    if groups is not None:
        if not isinstance(groups, dict):
            raise TypeError("concurrency_groups must be a dict of group name to max concurrency")
        for g, n in groups.items():
            if not isinstance(g, str) or not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"concurrency_groups: group {g!r} needs a positive integer max concurrency, not {n!r}")
    lifetime = out.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError("lifetime must be None, 'detached' or 'non_detached'")
    return out


def check_retry_exceptions(value: Any) -> None:
    """``retry_exceptions`` is a bool or a list/tuple of exception classes (follows Ray)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
        return
    raise TypeError(f"retry_exceptions must be a bool or a list of exception types, not {value!r}")


def _check_amount(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, not {value!r}")


def resource_request(options: dict, default_cpus: float) -> dict:
    """The resources a task or actor asks for."""
    cpus = options.get("num_cpus")
    res = {"CPU": float(default_cpus if cpus is None else cpus)}
    if options.get("num_gpus"):
        res["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        res["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        res[k] = float(v)
    return {k: v for k, v in res.items() if v}


def strategy_of(options: dict) -> Any:
    """The wire form of a scheduling strategy."""
    s = options.get("scheduling_strategy")
    if s is None or s == "DEFAULT":
        return None
    if s == "SPREAD":
        return "SPREAD"
    node_id = getattr(s, "node_id", None)
    if node_id is not None:
        return ["node", node_id if isinstance(node_id, str) else node_id.hex(), bool(getattr(s, "soft", False))]
    raise ValueError(f"unsupported scheduling_strategy {s!r}")
