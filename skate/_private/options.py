"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and defaults.

Every option Ray 2.60 accepts is known here.  Each one is either honoured
by skate or, when given a value that would change behaviour skate does not
implement yet, rejected with ``NotImplementedError`` naming the option: an
option is never accepted and silently ignored.  Type and range errors follow
Ray (``TypeError`` for a wrong type, ``ValueError`` for a bad value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_NUM = (int, float)
_NONE = type(None)

# name -> accepted types (None allowed where Ray allows it)
_TYPES: dict[str, tuple] = {
    "num_cpus": (float, int, _NONE),
    "num_gpus": (float, int, _NONE),
    "memory": (float, int, _NONE),
    "object_store_memory": (int, _NONE),
    "resources": (dict, _NONE),
    "accelerator_type": (str, _NONE),
    "max_calls": (int, _NONE),
    "max_retries": (int, _NONE),
    "max_concurrency": (int, _NONE),
    "retry_exceptions": (bool, list, tuple),
    "name": (str, _NONE),
    "namespace": (str, _NONE),
    "runtime_env": (dict, _NONE),
    "label_selector": (dict, _NONE),
    "fallback_strategy": (list, _NONE),
    "_labels": (dict, _NONE),
    "get_if_exists": (bool,),
    "enable_task_events": (bool,),
    "lifetime": (str, _NONE),
    "_generator_backpressure_num_objects": (int, _NONE),
    "_actor_generator_backpressure_num_objects": (int, _NONE),
    "placement_group_bundle_index": (int,),
    "placement_group_capture_child_tasks": (bool, _NONE),
}

_COMMON = {
    "num_cpus", "num_gpus", "resources", "memory", "accelerator_type", "object_store_memory",
    "name", "runtime_env", "scheduling_strategy", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "label_selector", "fallback_strategy", "_labels",
    "enable_task_events",
}
TASK_OPTIONS = _COMMON | {
    "num_returns", "max_calls", "max_retries", "retry_exceptions",
    "_generator_backpressure_num_objects", "_num_objects_per_yield",
}
"""Options of ``@remote`` on a function (Ray 2.60's ``task_options``)."""

ACTOR_OPTIONS = _COMMON | {
    "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls", "namespace",
    "lifetime", "get_if_exists", "concurrency_groups", "allow_out_of_order_execution",
    "enable_tensor_transport", "_actor_generator_backpressure_num_objects", "retry_exceptions",
}
"""Options of ``@remote`` on a class (Ray 2.60's ``actor_options``)."""

LEGACY_TASK_OPTIONS = {"num_return_vals": "num_returns"}
"""Old spellings still accepted (from early Ray releases): old name -> current name."""

METHOD_OPTIONS = {
    "num_returns", "concurrency_group", "max_task_retries", "retry_exceptions",
    "_generator_backpressure_num_objects", "_num_objects_per_yield", "enable_task_events",
    "tensor_transport",
}
"""Options of ``@method`` and ``ActorMethod.options`` (Ray 2.60)."""


def _empty(v: Any) -> bool:
    return v is None or v == {} or v == []


# Options skate knows but does not implement: allowed only at values that
# change nothing; anything else raises NotImplementedError with the reason.
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "accelerator_type": (_empty, "accelerator types are not tracked by skate's nodes"),
    "object_store_memory": (_empty, "per-task/actor object store reservations are not implemented"),
    "label_selector": (_empty, "node labels are not implemented"),
    "fallback_strategy": (_empty, "node labels are not implemented"),
    "_labels": (_empty, "task labels are not implemented"),
    "_num_objects_per_yield": (lambda v: v is None or v == 1, "generator tasks are not supported yet"),
    "enable_tensor_transport": (lambda v: not v, "tensor transports are not implemented"),
    "tensor_transport": (lambda v: v is None or str(v).lower() == "object_store", "tensor transports are not implemented"),
}


def not_supported(what: str, why: str) -> NotImplementedError:
    """The error for an option value skate does not honour."""
    return NotImplementedError(f"skate does not support {what} yet: {why}.")


def _check_type(key: str, value: Any) -> None:
    types = _TYPES.get(key)
    if types is not None and not isinstance(value, types):
        shown = types[0] if len(types) == 1 else tuple(types)
        raise TypeError(f"The type of keyword '{key}' must be {shown}, but received type {type(value)}")


def _check_amount(name: str, value: Any) -> None:
    if not isinstance(value, _NUM):
        raise TypeError(f"The type of resource '{name}' must be a number, but received type {type(value)}")
    if value < 0:
        raise ValueError(f"The quantity of resource {name} cannot be negative")


def _check_retries(key: str, value: Any) -> None:
    if value is not None and value < -1:
        raise ValueError(
            f"The keyword '{key}' only accepts None, 0, -1 or a positive integer, where -1 represents infinity."
        )


def validate(options: dict, actor: bool, in_options: bool = False) -> dict:
    """Checks option names and values like Ray; returns a normalized copy.

    Args:
        options: The keyword arguments of ``@remote(...)`` or ``.options(...)``.
        actor: True for an actor class, False for a remote function.
        in_options: True for ``.options()`` (where ``max_calls`` may not be set, like Ray).

    Raises:
        ValueError: an unknown option, or a value out of range.
        TypeError: a value of the wrong type.
        NotImplementedError: an option value skate does not honour yet.
    """
    allowed = ACTOR_OPTIONS if actor else TASK_OPTIONS
    out = dict(options)
    if not actor:
        for old, new in LEGACY_TASK_OPTIONS.items():
            if old in out:
                value = out.pop(old)
                out.setdefault(new, value)
    for key in out:
        if key not in allowed:
            kind = "actors" if actor else "remote functions"
            raise ValueError(f"Invalid option keyword {key} for {kind}. Valid ones are {sorted(allowed)}")
    for key, value in out.items():
        _check_type(key, value)
    if in_options and not actor and "max_calls" in out:
        raise ValueError("Setting 'max_calls' is not supported in '.options()'.")
    res = out.get("resources")
    if res:
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in 'resources' keyword")
            _check_amount(k, v)
    for k in ("num_cpus", "num_gpus", "memory"):
        if out.get(k) is not None:
            _check_amount(k, out[k])
    nr = out.get("num_returns")
    if nr is not None and nr not in ("streaming", "dynamic"):
        if not isinstance(nr, int) or isinstance(nr, bool):
            raise TypeError(f"The type of keyword 'num_returns' must be int or 'streaming', but received type {type(nr)}")
        if nr < 0:
            raise ValueError(f"The keyword 'num_returns' only accepts None, a non-negative integer, 'streaming' or 'dynamic', not {nr}")
    for k in ("max_retries", "max_restarts", "max_task_retries"):
        _check_retries(k, out.get(k))
    mc = out.get("max_calls")
    if mc is not None and mc < 0:
        raise ValueError("The keyword 'max_calls' only accepts None, 0 or a positive integer.")
    re = out.get("retry_exceptions")
    if isinstance(re, (list, tuple)) and not all(isinstance(c, type) and issubclass(c, BaseException) for c in re):
        raise ValueError("retry_exceptions must be either a boolean or a list of exceptions")
    mcc = out.get("max_concurrency")
    if mcc is not None and mcc < 1:
        raise ValueError("max_concurrency must be a positive integer")
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
    if out.get("lifetime") not in (None, "detached", "non_detached"):
        raise ValueError("actor `lifetime` argument must be one of 'detached', 'non_detached' and 'None'.")
    if out.get("get_if_exists") and not out.get("name"):
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    if "scheduling_strategy" in out:
        strategy_of(out)
    if out.get("runtime_env"):
        from skate._private.runtime_env import spec

        out["runtime_env"] = spec.validate(out["runtime_env"]) or None
    pg = out.get("placement_group", "default")
    if pg is not None and pg != "default" and type(pg).__name__ != "PlacementGroup":
        raise TypeError(f"placement_group must be a PlacementGroup, 'default' or None, not {pg!r}")
    check_supported(out)
    return out


def check_supported(options: dict) -> None:
    """Raises NotImplementedError for an option value skate does not honour."""
    for key, value in options.items():
        rule = _UNSUPPORTED.get(key)
        if rule is not None and not rule[0](value):
            raise not_supported(f"the option {key}={value!r}", rule[1])


def validate_method(options: dict) -> dict:
    """Checks ``@method`` / ``ActorMethod.options`` arguments like Ray; returns a copy.

    Raises:
        ValueError: an unknown option or a bad ``num_returns``.
        NotImplementedError: an option value skate does not honour yet.
    """
    for key in options:
        if key not in METHOD_OPTIONS:
            raise ValueError(f"Invalid option keyword {key} for actor methods. Valid ones are {sorted(METHOD_OPTIONS)}")
    out = dict(options)
    nr = out.get("num_returns")
    if nr is not None and nr not in ("streaming", "dynamic") and (not isinstance(nr, int) or nr < 0):
        raise ValueError(f"num_returns must be a non-negative integer, 'streaming' or 'dynamic', not {nr!r}")
    bp = out.get("_generator_backpressure_num_objects")
    if bp is not None and (not isinstance(bp, int) or isinstance(bp, bool) or bp < -1):
        raise ValueError(f"_generator_backpressure_num_objects must be an int (-1 or 0: no limit), not {bp!r}")
    if out.get("retry_exceptions") is not None:
        check_retry_exceptions(out["retry_exceptions"])
    mtr = out.get("max_task_retries")
    if mtr is not None and (not isinstance(mtr, int) or isinstance(mtr, bool) or mtr < -1):
        raise ValueError("max_task_retries must be an integer >= -1 (-1: retry forever)")
    if out.get("concurrency_group") is not None and not isinstance(out["concurrency_group"], str):
        raise TypeError(f"concurrency_group must be a group name (str), not {out['concurrency_group']!r}")
    if out.get("enable_task_events") is not None:
        _check_type("enable_task_events", out["enable_task_events"])
    check_supported(out)
    return out


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
    """The wire form of a scheduling strategy.

    Raises:
        NotImplementedError: for a node-label strategy.
        ValueError: for anything else that is not a strategy.

    A placement-group strategy is None here: the task or actor asks for its
    bundle's resources instead (see ``placement``).
    """
    s = options.get("scheduling_strategy")
    if s is None or s == "DEFAULT":
        return None
    if s == "SPREAD":
        return "SPREAD"
    kind = type(s).__name__
    if kind == "PlacementGroupSchedulingStrategy":
        return None
    if kind == "NodeLabelSchedulingStrategy":
        raise not_supported(f"scheduling_strategy={kind}", "node labels are not implemented")
    node_id = getattr(s, "node_id", None)
    if node_id is not None:
        return ["node", node_id if isinstance(node_id, str) else node_id.hex(), bool(getattr(s, "soft", False))]
    raise ValueError(f"unsupported scheduling_strategy {s!r}: use 'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy")


def check_retry_exceptions(value: Any) -> None:
    """``retry_exceptions`` is a bool or a list/tuple of exception classes (follows Ray)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
        return
    raise TypeError(f"retry_exceptions must be a bool or a list of exception types, not {value!r}")
