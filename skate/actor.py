"""Actors: ``@skate.remote class C``, ``C.remote()``, handles and method calls."""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle

from skate._private import ids, runtime
from skate._private import options as opts
from skate._private.core_worker.submitter import TaskRecord, encode_args, make_returns


def method(*args: Any, **kwargs: Any) -> Any:
    """Sets per-method options on an actor method: ``@skate.method(num_returns=2)``."""

    def decorate(fn: Any) -> Any:
        for k in kwargs:
            if k not in ("num_returns", "concurrency_group", "max_task_retries", "retry_exceptions", "enable_task_events", "tensor_transport"):
                raise ValueError(f"Invalid option {k!r} for @method")
        fn.__skate_method_options__ = kwargs
        return fn

    if args and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def _method_meta(cls: type) -> dict:
    meta = {}
    for name, fn in inspect.getmembers(cls, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
        o = getattr(fn, "__skate_method_options__", {})
        meta[name] = o.get("num_returns", 1)
    return meta


class ActorClass:
    """A class whose instances live in their own worker processes."""

    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self._options = opts.validate(options, actor=True)
        self._name = cls.__name__
        self._meta = _method_meta(cls)
        self._pickled: bytes | None = None
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._name}()', use '{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Creates the actor; returns its handle at once."""
        return self._remote(args, kwargs, self._options)

    def options(self, **actor_options: Any) -> _ActorOptions:
        """The same class with some options overridden for the next creations."""
        merged = dict(self._options)
        merged.update(opts.validate(actor_options, actor=True))
        return _ActorOptions(self, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node creating this actor."""
        from skate.dag.class_node import ClassNode

        return ClassNode(self, args, kwargs, self._options)

    def _remote(self, args: tuple, kwargs: dict, o: dict) -> ActorHandle:
        core = runtime.current()
        name = o.get("name")
        namespace = o.get("namespace") or core.namespace
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError("an actor name must be a non-empty string")
        if name and o.get("get_if_exists"):
            from skate._private.api import get_actor

            try:
                return get_actor(name, namespace)
            except ValueError:
                pass
        if self._pickled is None:
            self._pickled = cloudpickle.dumps(self._cls)
        actor_id = ids.new_id(16)
        detached = o.get("lifetime") == "detached"
        if detached and not name:
            raise ValueError("a detached actor must have a name")
        handle_meta = cloudpickle.dumps((self._name, self._meta))
        core.gcs_call(
            "register_actor",
            {
                "actor_id": actor_id,
                "name": name,
                "namespace": namespace,
                "class_name": self._name,
                "detached": detached,
                "owner": core.address,
                "job_id": core.job_id,
                "max_restarts": o.get("max_restarts", 0),
            },
            [handle_meta],
        )
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, f"the constructor of {self._name}")
        rec = TaskRecord()
        rec.spec = {
            "t": core.new_task_id(), "n": self._name, "aid": actor_id, "a": blob, "r": [], "j": core.job_id, "ns": core.namespace,
            "mcc": o.get("max_concurrency"), "detached": detached, "nr": 1,
        }
        rec.arg_bufs, rec.deps, rec.keep, rec.name = arg_bufs, deps, keep, self._name
        rec.return_ids = []
        held = opts.resource_request(o, 0)
        placement = dict(held) if o.get("num_cpus") is not None else dict(held, CPU=1.0)
        lease_body = {
            "resources": held,
            "placement": placement,
            "strategy": opts.strategy_of(o),
            "actor_id": actor_id,
            "detached": detached,
        }
        st = core.actors.state(actor_id, self._name, owned=True)
        st.detached, st.named = detached, bool(name)
        handle = ActorHandle(actor_id, self._name, self._meta)
        core.post(core.actors.create, st, rec, self._pickled, lease_body)
        return handle


class _ActorOptions:
    def __init__(self, cls: ActorClass, options: dict) -> None:
        self._cls = cls
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._cls._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from skate.dag.class_node import ClassNode

        return ClassNode(self._cls, args, kwargs, self._options)


class ActorHandle:
    """A reference to an actor; call methods with ``handle.method.remote(...)``."""

    def __init__(self, actor_id: bytes, class_name: str, meta: dict) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._meta = meta
        core = runtime.current()
        self._core = core
        self._state = core.actors.state(actor_id, class_name)
        self._state.handles += 1

    def __getattr__(self, name: str) -> ActorMethod:
        meta = self.__dict__.get("_meta")
        if name in _BUILTIN_METHODS:  # every actor answers these (Ray's names)
            return ActorMethod(self, name, 1)
        if meta is None or name not in meta:
            cls = self.__dict__.get("_class_name", "actor")
            raise AttributeError(f"'{cls}' actor has no method {name!r}")
        return ActorMethod(self, name, meta[name])

    def __reduce__(self) -> tuple:
        self._state.shared = True
        return (_rebuild_handle, (self._actor_id, self._class_name, self._meta))

    def __del__(self) -> None:
        core = self.__dict__.get("_core")
        if core is not None and not core.closed and self._state.owned:
            try:
                core.post(core.actors.handle_dropped, self._actor_id)
            except RuntimeError:
                pass

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def _ray_actor_id(self) -> ids.ActorID:
        return ids.ActorID(self._actor_id)

    def _submit(self, method_name: str, args: tuple, kwargs: dict, num_returns: int) -> Any:
        core = self._core
        name = f"{self._class_name}.{method_name}"
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, f"actor method {name}")
        task_id = core.new_task_id()
        rec = TaskRecord()
        rec.spec = {"t": task_id, "m": method_name, "nr": num_returns, "j": core.job_id, "a": blob, "r": []}
        rec.arg_bufs, rec.deps, rec.keep, rec.name = arg_bufs, deps, keep, name
        rec.actor = self._state
        refs = make_returns(core, task_id, num_returns, rec)
        core.actors.submit_threadsafe(self._state, rec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return refs


_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__", "__ray_call__")


def _rebuild_handle(actor_id: bytes, class_name: str, meta: dict) -> ActorHandle:
    return ActorHandle(actor_id, class_name, meta)


class ActorMethod:
    """A method of an actor handle: ``.remote()``, ``.options()``, ``.bind()``."""

    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', "
            f"try 'object.{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the method on the actor; returns ObjectRef(s) for the result."""
        return self._handle._submit(self._name, args, kwargs, self._num_returns)

    def options(self, **o: Any) -> ActorMethod:
        """The same method with ``num_returns`` overridden."""
        m = ActorMethod(self._handle, self._name, o.get("num_returns", self._num_returns))
        return m

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node calling this method."""
        from skate.dag.class_node import ClassMethodNode

        return ClassMethodNode(
            self._name, args, kwargs, {"num_returns": self._num_returns},
            {"parent_class_node": self._handle, "prev_class_method_call": None},
        )


def exit_actor() -> None:
    """Ends the current actor after this call returns; callers then get ActorDiedError."""
    from skate._private.core_worker.executor import ActorExit

    core = runtime.current_or_none()
    if core is None or core.executor is None or core.executor.actor is None:
        raise TypeError("exit_actor() called outside an actor")
    raise ActorExit(0)
