"""skate: a distributed execution framework for Python with Ray's public API.

``import skate as ray`` runs Ray programs unchanged.
"""

from __future__ import annotations

from typing import Any

from skate import exceptions
from skate._private.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    shutdown,
    timeline,
    wait,
)
from skate.actor import ActorClass, ActorHandle, exit_actor, method
from skate.object_ref import ObjectRef
from skate.remote_function import RemoteFunction

__version__ = "0.1.0"


def remote(*args: Any, **kwargs: Any) -> Any:
    """Makes a function a task, or a class an actor.

    Use bare (``@remote``) or with options (``@remote(num_cpus=2)``).
    """

    def make(obj: Any) -> Any:
        import inspect

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
    "ObjectRef",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
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
    "shutdown",
    "timeline",
    "wait",
]
