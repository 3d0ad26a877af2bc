"""skate: a distributed execution framework for Python with Ray's public API.

``import skate as ray`` runs Ray programs unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names are imported on first use (PEP 562), so the daemons and
# workers, which import ``skate._private.*``, do not pay for the whole API.
_LAZY = {
    "actor": "skate.actor",
    "exceptions": "skate.exceptions",
    "runtime_context": "skate.runtime_context",
    "util": "skate.util",
    "error_info": "skate._private.api",
    "dag": "skate.dag",
    "available_resources": "skate._private.api",
    "cancel": "skate._private.api",
    "cluster_resources": "skate._private.api",
    "get": "skate._private.api",
    "get_actor": "skate.actor",
    "get_gpu_ids": "skate._private.api",
    "get_runtime_context": "skate._private.api",
    "init": "skate._private.api",
    "is_initialized": "skate._private.api",
    "kill": "skate._private.api",
    "nodes": "skate._private.api",
    "put": "skate._private.api",
    "shutdown": "skate._private.api",
    "timeline": "skate._private.state_api",
    "wait": "skate._private.api",
    "ActorClass": "skate.actor",
    "ActorHandle": "skate.actor",
    "exit_actor": "skate.actor",
    "method": "skate.actor",
    "ObjectRef": "skate.object_ref",
    "ObjectRefGenerator": "skate._private.core_worker.streams",
    "DynamicObjectRefGenerator": "skate._private.core_worker.streams",
    "ObjectID": "skate.object_ref",
    "ActorID": "skate._private.ids",
    "JobID": "skate._private.ids",
    "NodeID": "skate._private.ids",
    "PlacementGroupID": "skate._private.ids",
    "TaskID": "skate._private.ids",
    "WorkerID": "skate._private.ids",
    "UniqueID": "skate._private.ids",
    "RemoteFunction": "skate.remote_function",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skate' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith(name) else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"


def remote(*args: Any, **kwargs: Any) -> Any:
    """Makes a function a task, or a class an actor.

    Use bare (``@remote``) or with options (``@remote(num_cpus=2)``).
    """

    def make(obj: Any) -> Any:
        import inspect

        from skate.actor import ActorClass
        from skate.remote_function import RemoteFunction

        if inspect.isclass(obj):
            return ActorClass(obj, kwargs)
        if callable(obj):
            return RemoteFunction(obj, kwargs)
        raise TypeError("@remote applies to functions and classes")

    if len(args) == 1 and not kwargs and callable(args[0]):
        return make(args[0])
    if args:
        raise TypeError("@remote takes only keyword arguments, e.g. @remote(num_cpus=2)")
    return make


__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorID",
    "DynamicObjectRefGenerator",
    "JobID",
    "NodeID",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "PlacementGroupID",
    "RemoteFunction",
    "TaskID",
    "UniqueID",
    "WorkerID",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "error_info",
    "exceptions",
    "exit_actor",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "runtime_context",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
