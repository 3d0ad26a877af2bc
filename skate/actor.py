"""Actors: ``@skate.remote class C``, ``C.remote()``, handles and method calls."""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import cancellation, ids, runtime
from skate._private import options as opts
from skate._private import placement as pg_placement
from skate._private.core_worker import streams
from skate._private.core_worker.task_spec import TaskRecord, encode_args, make_returns
from skate._private.runtime_env import submit as renv_submit
from skate._private.signature import CallSignature
from skate._private.source import dumps_code


class ActorClassInheritanceException(TypeError):
    """A class statement tried to inherit from an actor class (follows Ray): inherit
    from the plain class and decorate the subclass instead."""


def method(*args: Any, **kwargs: Any) -> Any:
    """Sets per-method options on an actor method: ``@skate.method(num_returns=2)``.

    Follows Ray's ``ray.method``: use bare or with keyword options.

    Raises:
        ValueError: an unknown option or a bad value.
        NotImplementedError: an option value skate does not honour yet.
    """
    options = opts.validate_method(kwargs)

    def decorate(fn: Any) -> Any:
        fn.__skate_method_options__ = options
        return fn

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    if args:
        raise TypeError("@method takes only keyword arguments, e.g. @method(num_returns=2)")
    return decorate


def method_meta(cls: type) -> dict:
    """For each method: ``(num_returns, CallSignature)`` (sent with every handle)."""
    meta = {}
    for name, fn in inspect.getmembers(cls, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
        # Options set by @method under a user decorator are found through ``__wrapped__``.
        o = _method_options(fn)
        static = isinstance(inspect.getattr_static(cls, name, None), staticmethod)
        # A classmethod arrives bound (no ``cls``); a plain function still has ``self``.
        drop = not static and inspect.isfunction(fn)
        # Generator methods stream their items by default (like Ray).
        gen = inspect.isgeneratorfunction(inspect.unwrap(fn)) or inspect.isasyncgenfunction(inspect.unwrap(fn))
        nr = o.get("num_returns", "streaming" if gen else 1)
        meta[name] = (nr, CallSignature(fn, f"{cls.__name__}.{name}", drop_first=drop))
    return meta


def _method_options(fn: Any) -> dict:
    """Options set with ``@method``, found through decorators that kept ``__wrapped__``."""
    inner = inspect.unwrap(fn, stop=lambda f: hasattr(f, "__skate_method_options__"))
    return getattr(inner, "__skate_method_options__", {})


def _method_extras(cls: type) -> dict:
    """Per-method options other than ``num_returns`` (retries, concurrency group)."""
    out = {}
    for name, fn in inspect.getmembers(cls, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
        o = {k: v for k, v in _method_options(fn).items() if k in _CALL_OPTIONS}
        if o:
            out[name] = o
    return out


class ActorClass:
    """A class whose instances live in their own worker processes."""

    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self._options = opts.validate(options, actor=True)
        self._name = cls.__name__
        self._meta = method_meta(cls)
        self._extras = _method_extras(cls)
        self._signature = CallSignature(cls, cls.__name__)
        self._pickled: bytes | None = None
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise ActorClassInheritanceException(
            f"Inheriting from actor class {self._name!r} is not allowed; inherit from the plain class "
            "and apply @remote to the subclass."
        )

    def __getattr__(self, name: str) -> Any:
        # Class attributes and static methods of the user's class read through
        # the actor class, as methods running in the actor refer to them by the
        # class's (now the actor class's) name.  Follows Ray.
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._name}()', use '{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Creates the actor; returns its handle at once.

        Raises:
            TypeError: the arguments do not fit the constructor's signature.
        """
        return self._create(args, kwargs, self._options)

    def _remote(self, args: Any = None, kwargs: Any = None, **actor_options: Any) -> ActorHandle:
        """Creates the actor with options given as keywords (follows Ray's ``_remote``).

        ``A._remote(args=[1], num_cpus=2)`` is ``A.options(num_cpus=2).remote(1)``.
        """
        o = self._options
        if actor_options:
            o = dict(o)
            o.update(opts.validate(actor_options, actor=True))
        return self._create(tuple(args or ()), dict(kwargs or {}), o)

    def options(self, **actor_options: Any) -> _ActorOptions:
        """The same class with some options overridden for the next creations."""
        merged = dict(self._options)
        merged.update(opts.validate(actor_options, actor=True, in_options=True))
        return _ActorOptions(self, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node creating this actor."""
        self._signature.check(args, kwargs)
        from skate.dag.class_node import ClassNode

        return ClassNode(self, args, kwargs, self._options)

    def _create(self, args: tuple, kwargs: dict, o: dict) -> ActorHandle:
        self._signature.check(args, kwargs)
        core = runtime.current()
        name = o.get("name")
        namespace = o.get("namespace") or core.namespace
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError("an actor name must be a non-empty string")
        if name and o.get("get_if_exists"):
            try:
                return get_actor(name, namespace)
            except ValueError:
                pass
            try:
                return self._create_new(args, kwargs, o, core, name, namespace)
            except exc.ActorAlreadyExistsError:
                # Another process created it between our lookup and our registration.
                return get_actor(name, namespace)
        return self._create_new(args, kwargs, o, core, name, namespace)

    def _is_async(self) -> bool:
        return any(
            inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
            for _, m in inspect.getmembers(self._cls, inspect.isfunction)
        )

    def _create_new(self, args: tuple, kwargs: dict, o: dict, core: Any, name: str | None, namespace: str) -> ActorHandle:
        if self._pickled is None:
            self._pickled = dumps_code(self._cls)
        actor_id = ids.new_id(16)
        detached = o.get("lifetime") == "detached"
        if detached and not name:
            raise ValueError("a detached actor must have a name")
        copts = _call_options(o, self._is_async())
        held = opts.resource_request(o, 0)
        placement = dict(held) if o.get("num_cpus") is not None else dict(held, CPU=1.0)
        in_group = pg_placement.apply(o, held, placement, "actor", self._name)
        if in_group is not None:  # (its bundle's resources instead)
            held, placement = in_group[0], in_group[1]
        register = self._registration(core, actor_id, name, namespace, detached, o, copts)
        if name:  # a name in use is refused here and now (follows Ray)
            try:
                core.gcs_call("register_actor", register[0], [register[1]])
            except ValueError as e:  # the control store refuses a name in use
                raise exc.ActorAlreadyExistsError(str(e)) from None
            register = None
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, f"the constructor of {self._name}")
        rec = TaskRecord()
        rec.spec = {
            "t": core.new_task_id(), "n": self._name, "aid": actor_id, "a": blob, "r": [], "j": core.job_id, "ns": core.namespace,
            "mcc": o.get("max_concurrency"), "detached": detached, "nr": 1,
        }
        if o.get("enable_task_events") is False:
            rec.spec["ne"] = 1
        if getattr(core, "address", None):
            rec.spec["ow"] = core.address[0]  # (the actor ends with its owner's connection)
        if in_group is not None:
            rec.spec["pg"] = in_group[2]
        if held:
            rec.spec["res"] = held
        if name:
            rec.spec["an"] = name
        if o.get("concurrency_groups"):
            rec.spec["cgs"] = dict(o["concurrency_groups"])
        rec.arg_bufs, rec.deps, rec.keep, rec.name = arg_bufs, deps, keep, self._name
        rec.return_ids = []
        lease_body = {
            "resources": held,
            "placement": placement,
            "strategy": None if in_group is not None else (opts.strategy_of(o) or "BALANCE"),
            "actor_id": actor_id,
            "detached": detached,
        }
        renv = o.get("runtime_env")
        if renv or core.runtime_env:
            resolved = renv_submit.for_submit(core, renv)
            if resolved:
                lease_body["runtime_env"] = resolved
        st = core.actors.state(actor_id, self._name, owned=True)
        st.detached, st.named = detached, bool(name)
        st.max_restarts = o.get("max_restarts") or 0
        anchor = None
        if not name and not detached:
            # Every handle, here or in other processes, holds a ref to this
            # object: when it is freed, the last handle anywhere is gone.
            anchor = core.put(None)
            core.free_hooks[anchor._id] = lambda aid=actor_id: core.actors.handle_dropped(aid)
        handle = ActorHandle(actor_id, self._name, self._meta, self._extras, copts, anchor)
        # (An anonymous actor is registered on the way: no round trip per creation.)
        core.post(core.actors.create, st, rec, self._pickled, lease_body, register)
        return handle

    def _registration(
        self, core: Any, actor_id: bytes, name: str | None, namespace: str, detached: bool, o: dict, copts: dict
    ) -> tuple[dict, bytes]:
        """The ``register_actor`` message and its buffer (the pickled handle metadata)."""
        # (Only a named actor's handle is ever rebuilt from the control store.)
        handle_meta = cloudpickle.dumps((self._name, self._meta, self._extras, copts)) if name else b""
        return (
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
            handle_meta,
        )


class _ActorOptions:
    """What ``ActorClass.options(...)`` returns: ``.remote()`` with those options."""

    def __init__(self, cls: ActorClass, options: dict) -> None:
        self._cls = cls
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Creates the actor with these options."""
        return self._cls._create(args, kwargs, self._options)

    def options(self, **actor_options: Any) -> _ActorOptions:
        """These options with some more overridden."""
        merged = dict(self._options)
        merged.update(opts.validate(actor_options, actor=True, in_options=True))
        return _ActorOptions(self._cls, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node creating the actor with these options."""
        self._cls._signature.check(args, kwargs)
        from skate.dag.class_node import ClassNode

        return ClassNode(self._cls, args, kwargs, self._options)


class ActorHandle:
    """A reference to an actor; call methods with ``handle.method.remote(...)``."""

    def __init__(
        self, actor_id: bytes, class_name: str, meta: dict, extras: dict | None = None, copts: dict | None = None, anchor: Any = None
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._meta = meta
        self._anchor = anchor  # see ActorClass._create_new
        core = runtime.current()
        self._core = core
        self._state = core.actors.state(actor_id, class_name)
        self._state.configure(extras or {}, copts or {})

    def __getattr__(self, name: str) -> ActorMethod:
        meta = self.__dict__.get("_meta")
        if name in _BUILTIN_METHODS:  # every actor answers these (Ray's names)
            return ActorMethod(self, name, 1, None)
        if meta is None or name not in meta:
            cls = self.__dict__.get("_class_name", "actor")
            raise AttributeError(f"'{cls}' actor has no method {name!r}")
        num_returns, sig = meta[name]
        return ActorMethod(self, name, num_returns, sig)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._meta))

    def __reduce__(self) -> tuple:
        st = self._state
        return (_rebuild_handle, (self._actor_id, self._class_name, self._meta, st.extras, st.copts, self._anchor))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def _ray_actor_id(self) -> ids.ActorID:
        return ids.ActorID(self._actor_id)

    def _submit(
        self, method_name: str, args: tuple, kwargs: dict, num_returns: int, over: dict | None = None, call_name: str = ""
    ) -> Any:
        core = self._core
        st = self._state
        retries, retry_exc, group, events, name = st.method_options(method_name)
        if call_name:
            name = call_name
        if type(num_returns) is not int:  # "streaming" / "dynamic": a generator method
            num_returns = streams.num_returns_code(num_returns)
        if st.max_pending > 0 and len(st.queue) + len(st.inflight) + st.waiting_args >= st.max_pending:
            raise exc.PendingCallsLimitExceeded(
                f"The call {name} was not submitted: {st.max_pending} calls to this actor "
                "are already pending (the actor's max_pending_calls option)"
            )
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, ("actor method ", name))
        task_id = core.new_task_id()
        rec = TaskRecord()
        rec.spec = spec = {"t": task_id, "m": method_name, "nr": num_returns, "j": core.job_id, "a": blob, "r": []}
        if call_name:
            spec["cn"] = call_name
        rec.arg_bufs, rec.deps, rec.keep, rec.name = arg_bufs, deps, keep, name
        rec.actor = st
        if over:
            retries = over.get("max_task_retries", retries)
            retry_exc = over.get("retry_exceptions", retry_exc)
            group = over.get("concurrency_group", group)
            events = over.get("enable_task_events", events)
        if not events:
            spec["ne"] = 1
        rec.retries_left, rec.retry_exceptions = retries, retry_exc
        if group is not None:
            if group not in st.groups and group != "_ray_default":
                raise ValueError(
                    f"{name} asks for concurrency group {group!r}, but the actor defines "
                    f"{st.groups or 'none'} (its concurrency_groups option)"
                )
            spec["cg"] = group
        if num_returns < 0:
            return _submit_generator(core, st, rec, num_returns, over)
        refs = make_returns(core, task_id, num_returns, rec)
        parent = getattr(core.ctx, "task_id", None)  # (the task making this call, if any: see cancellation)
        if refs and parent is not None:
            cancellation.note_child(core, parent, refs[0]._id)
        core.actors.submit_threadsafe(st, rec)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return refs


def _submit_generator(core: Any, st: Any, rec: TaskRecord, nr: int, over: dict | None) -> Any:
    """Submits a call of a generator method: an ``ObjectRefGenerator`` of its items
    (``"streaming"``), or one ref to a ``DynamicObjectRefGenerator`` (``"dynamic"``)."""
    bp = (over or {}).get("_generator_backpressure_num_objects")
    if bp is None:
        bp = st.extras.get(rec.spec["m"], {}).get("_generator_backpressure_num_objects")
    if bp is None:
        bp = st.copts.get("gen_bp")
    if bp is not None and bp <= 0:  # 0 or -1: no limit
        bp = None
    if bp:
        rec.spec["bp"] = bp
    if nr == streams.STREAMING:
        rec.return_ids = []
        gen = streams.ObjectRefGenerator(streams.register(core, rec, False, bp))
        core.actors.submit_threadsafe(st, rec)
        return gen
    refs = make_returns(core, rec.spec["t"], 1, rec)
    streams.register(core, rec, True, bp)
    core.actors.submit_threadsafe(st, rec)
    return refs[0]


_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__", "__ray_call__")
#: Options a call to an actor method may set (``@method`` or ``.options()``), besides num_returns.
_CALL_OPTIONS = (
    "concurrency_group", "max_task_retries", "retry_exceptions", "_generator_backpressure_num_objects", "enable_task_events",
)


def _call_options(o: dict, is_async: bool) -> dict:
    """The class-level options every caller applies to its calls (travel with handles).

    Raises ``ValueError`` for ``allow_out_of_order_execution=False`` on an
    async or threaded actor, whose calls never run in submission order
    (follows Ray).
    """
    keys = ("max_task_retries", "retry_exceptions", "max_pending_calls", "max_restarts")
    out = {k: o[k] for k in keys if o.get(k) is not None}
    concurrent = is_async or (o.get("max_concurrency") or 1) > 1
    ooo = o.get("allow_out_of_order_execution")
    if ooo is False and concurrent:
        raise ValueError(
            "allow_out_of_order_execution=False is not supported for async actors or actors with "
            "max_concurrency > 1: their calls run concurrently, so they cannot keep submission order"
        )
    if ooo if ooo is not None else concurrent:
        out["ooo"] = True
    if o.get("concurrency_groups"):
        out["groups"] = sorted(o["concurrency_groups"])
    if o.get("_actor_generator_backpressure_num_objects"):
        out["gen_bp"] = o["_actor_generator_backpressure_num_objects"]
    if o.get("enable_task_events") is False:
        out["ne"] = True
    return out


def _rebuild_handle(
    actor_id: bytes, class_name: str, meta: dict, extras: dict | None = None, copts: dict | None = None, anchor: Any = None
) -> ActorHandle:
    return ActorHandle(actor_id, class_name, meta, extras, copts, anchor)


class ActorMethod:
    """A method of an actor handle: ``.remote()``, ``.options()``, ``.bind()``."""

    def __init__(
        self, handle: ActorHandle, name: str, num_returns: Any, signature: CallSignature | None, call_name: str = "",
        over: dict | None = None,
    ) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._signature = signature
        self._call_name = call_name
        self._over = over  # call options set with .options()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', "
            f"try 'object.{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the method on the actor; returns ObjectRef(s) for the result.

        Raises:
            TypeError: the arguments do not fit the method's signature.
        """
        if self._signature is not None:
            self._signature.check(args, kwargs)
        return self._handle._submit(self._name, args, kwargs, self._num_returns, self._over, self._call_name)

    def _remote(
        self,
        args: Any = None,
        kwargs: Any = None,
        name: str = "",
        num_returns: Any = None,
        max_task_retries: int | None = None,
        retry_exceptions: Any = None,
        concurrency_group: str | None = None,
        _generator_backpressure_num_objects: int | None = None,
        _num_objects_per_yield: int | None = None,
        enable_task_events: bool | None = None,
        tensor_transport: str | None = None,
        _labels: dict | None = None,
    ) -> Any:
        """Calls the method with options given as keywords (follows Ray's ``ActorMethod._remote``)."""
        given = {
            "num_returns": num_returns,
            "max_task_retries": max_task_retries,
            "retry_exceptions": retry_exceptions,
            "concurrency_group": concurrency_group,
            "_generator_backpressure_num_objects": _generator_backpressure_num_objects,
            "_num_objects_per_yield": _num_objects_per_yield,
            "enable_task_events": enable_task_events,
            "tensor_transport": tensor_transport,
        }
        if _labels:
            raise opts.not_supported(f"the option _labels={_labels!r}", "task labels are not implemented")
        o = {k: v for k, v in given.items() if v is not None}
        if name:
            o["name"] = name
        return self.options(**o).remote(*(args or ()), **(kwargs or {}))

    def options(self, **options: Any) -> ActorMethod:
        """The same method with some call options overridden (follows Ray).

        Raises:
            ValueError: an unknown option.
            NotImplementedError: an option value skate does not honour yet.
        """
        call_name = options.pop("name", self._call_name)
        o = opts.validate_method(options)
        over = dict(self._over or {})
        over.update({k: v for k, v in o.items() if k in _CALL_OPTIONS})
        return ActorMethod(
            self._handle, self._name, o.get("num_returns", self._num_returns), self._signature, call_name, over or None
        )

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node calling this method."""
        if self._signature is not None:
            self._signature.check(args, kwargs)
        from skate.dag.class_node import ClassMethodNode

        return ClassMethodNode(
            self._name, args, kwargs, {"num_returns": self._num_returns},
            {"parent_class_node": self._handle, "prev_class_method_call": None},
        )


def exit_actor() -> None:
    """Ends the current actor at once (follows Ray).

    Inside an actor method the call ends there: the method's caller gets a
    ``RayActorError``, calls queued behind it fail with ``RayActorError``
    (even if user code catches the exception this raises), and the
    actor's ``__ray_shutdown__`` method and ``atexit`` handlers run.  In the
    constructor, the actor exits once created.  Raises ``TypeError``
    outside an actor.
    """
    core = runtime.current_or_none()
    ex = core.executor if core is not None else None
    if ex is None or ex.actor_id is None:
        mode = "a driver" if core is None or core.executor is None else "a task worker"
        raise TypeError(
            f"exit_actor API is called on a non-actor worker ({mode}). Call it inside an "
            "actor's method or constructor to exit the actor; use skate.kill(handle) to end an actor from outside."
        )
    ex.request_exit()


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the named actor ``name`` in ``namespace`` (default: this job's).

    Raises ``ValueError`` when no live actor has that name there (follows Ray).
    """
    if not name:
        raise ValueError("get_actor() needs a non-empty name")
    core = runtime.current()
    ns = namespace or core.namespace
    reply = core.gcs_call("get_named_actor", {"name": name, "namespace": ns})
    info, bufs = reply if isinstance(reply, tuple) else (reply, [])
    if info is None or info.get("state") == "DEAD":
        raise ValueError(
            f"Failed to look up actor with name {name!r}. No live actor has that name in namespace {ns!r}: "
            "it was never created there, it died, or it lives in another namespace "
            "(pass namespace=... to get_actor, or init(namespace=...))."
        )
    class_name, meta, extras, copts = cloudpickle.loads(bufs[0])
    return ActorHandle(info["actor_id"], class_name, meta, extras, copts)
