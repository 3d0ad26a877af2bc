"""Remote functions: ``@skate.remote def f(...)`` and ``f.remote(...)``."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from skate._private import cancellation, placement, runtime, task_context
from skate._private import options as opts
from skate._private.config import CONFIG
from skate._private.core_worker import streams
from skate._private.core_worker.task_spec import (
    TaskRecord,
    encode_args,
    make_returns,
    new_task_spec,
)
from skate._private.runtime_env import spec as renv_spec
from skate._private.runtime_env import submit as renv_submit
from skate._private.signature import CallSignature
from skate._private.source import dumps_code

_DEFAULT_RESOURCES = {"CPU": 1.0}


class RemoteFunction:
    """A function that runs as a task in a worker process."""

    def __init__(self, function: Any, options: dict) -> None:
        self._function = function
        self._options = opts.validate(options, actor=False)
        # The task's default name is the function's own name, like Ray (not its qualname).
        self._name = getattr(function, "__name__", None) or "task"
        self._qualname = getattr(function, "__qualname__", None) or self._name
        self._signature = CallSignature(function, self._name)
        self._pickled: tuple[bytes, bytes] | None = None
        self._plan_cache: tuple[dict, _Plan] | None = None
        self.__doc__ = getattr(function, "__doc__", None)
        self.__name__ = getattr(function, "__name__", "task")
        self.__wrapped__ = function
        self._is_generator = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self.__name__}()', try '{self.__name__}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits the task; returns an ObjectRef (a list for ``num_returns`` > 1; an
        ``ObjectRefGenerator`` for a generator function, whose items stream in).

        Raises:
            TypeError: the arguments do not fit the function's signature (like Ray,
                checked here rather than in the worker).
        """
        return self._submit(args, kwargs, self._options)

    def _remote(self, args: Any = None, kwargs: Any = None, serialized_runtime_env_info: Any = None, **task_options: Any) -> Any:
        """Submits the task with options given as keywords (follows Ray's ``_remote``).

        ``f._remote(args=[1], kwargs={"y": 2}, num_cpus=2)`` is
        ``f.options(num_cpus=2).remote(1, y=2)``; libraries call this form.

        Raises:
            NotImplementedError: for ``serialized_runtime_env_info`` (Ray's internal
                serialized form; pass ``runtime_env=`` instead).
        """
        if serialized_runtime_env_info:
            raise opts.not_supported("_remote(serialized_runtime_env_info=...)", "pass runtime_env={...} instead")
        o = self._options
        if task_options:
            o = dict(o)
            o.update(opts.validate(task_options, actor=False))
        return self._submit(tuple(args or ()), dict(kwargs or {}), o)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        """The same function with some options overridden for the next calls.

        Raises:
            ValueError, TypeError, NotImplementedError: as ``@remote`` does for a bad
                or unsupported option; ``max_calls`` cannot be set here (like Ray).
        """
        merged = dict(self._options)
        merged.update(opts.validate(task_options, actor=False, in_options=True))
        return _OptionsWrapper(self, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node calling this function."""
        self._signature.check(args, kwargs)
        from skate.dag.function_node import FunctionNode

        return FunctionNode(self, args, kwargs, self._options)

    def _fn_bytes(self) -> tuple[bytes, bytes]:
        if self._pickled is None:
            from skate._private import serialization

            try:
                data = dumps_code(self._function)
            except Exception as e:
                raise serialization.SerializationError(
                    serialization.explain(self._function, f"the remote function {self._name}", e)
                ) from e
            self._pickled = (hashlib.blake2b(data, digest_size=16).digest(), data)
        return self._pickled

    def _plan(self, o: dict) -> _Plan:
        """What ``o`` says of each call, worked out once per options dict."""
        cached = self._plan_cache
        if cached is not None and cached[0] is o:
            return cached[1]
        plan = _Plan(self, o)
        self._plan_cache = (o, plan)
        return plan

    def _submit(self, args: tuple, kwargs: dict, o: dict) -> Any:
        self._signature.check(args, kwargs)
        core = runtime.current()
        fn_id, fn_bytes = self._fn_bytes()
        plan = self._plan(o)
        nr, name = plan.nr, plan.name
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, plan.what)
        task_id = core.new_task_id()
        rec = TaskRecord()
        rec.spec = spec = new_task_spec(core, task_id, name, fn_id, nr, plan.max_calls, plan.max_retries)
        if plan.backpressure:
            spec["bp"] = plan.backpressure
        spec["a"] = blob
        if plan.no_task_events:
            spec["ne"] = 1
        rec.arg_bufs = arg_bufs
        rec.fn_id, rec.fn_bytes = fn_id, fn_bytes
        rec.deps = deps
        rec.keep = keep
        rec.name = name
        rec.func = self._qualname
        rec.retries_left = plan.max_retries
        rec.retry_exceptions = plan.retry_exceptions
        rec.resources = plan.resources
        rec.strategy = plan.strategy
        rec.key = plan.key
        parent = core.ctx.task_id  # (the task submitting this one, if any: see cancellation)
        if plan.placement_options or task_context.CURRENT.get() is not None:
            in_group = placement.apply(o, plan.resources, None, "task", name)
            if in_group is not None:  # (its bundle's resources instead)
                rec.resources, _, spec["pg"] = in_group
                rec.key = (tuple(sorted(rec.resources.items())), repr(rec.strategy))
        if rec.resources != _DEFAULT_RESOURCES:
            spec["res"] = rec.resources
        renv = plan.runtime_env
        if renv or core.runtime_env:
            rec.renv = renv_submit.for_submit(core, renv)
            rec.key = (*rec.key[:2], renv_spec.env_hash(rec.renv))
        if nr == streams.STREAMING:
            rec.return_ids = []
            gen = streams.ObjectRefGenerator(streams.register(core, rec, False, plan.backpressure))
            if deps or not core.submitter.try_now(rec):
                core.submitter.submit_threadsafe(rec)
            return gen
        refs = make_returns(core, task_id, 1 if nr == streams.DYNAMIC else nr, rec)
        if nr == streams.DYNAMIC:
            streams.register(core, rec, True, plan.backpressure)
            nr = 1
        if refs and parent is not None:
            cancellation.note_child(core, parent, refs[0]._id)
        if deps or not core.submitter.try_now(rec):
            core.submitter.submit_threadsafe(rec)
        if nr == 1:
            return refs[0]
        if nr == 0:
            return None
        return refs


class _Plan:
    """The per-call facts one options dict of a remote function implies.

    Shared by every call made with that dict (``o`` is not changed once
    validated): the record's ``resources``, ``strategy``, ``key`` and
    ``retry_exceptions`` are read, never changed in place.
    """

    __slots__ = ("nr", "name", "what", "max_retries", "max_calls", "backpressure", "retry_exceptions",
                 "resources", "strategy", "key", "placement_options", "runtime_env", "no_task_events")

    def __init__(self, fn: RemoteFunction, o: dict) -> None:
        nr = o.get("num_returns")
        if nr is None:  # like Ray: generator functions stream their items by default
            nr = "streaming" if fn._is_generator else 1
        self.nr = streams.num_returns_code(nr)
        self.name = o.get("name") or fn._name
        self.what = f"task {self.name}"
        self.max_retries = o.get("max_retries", CONFIG.task_max_retries)
        max_calls = o.get("max_calls")
        if max_calls is None:
            max_calls = 1 if o.get("num_gpus") else 0
        self.max_calls = max_calls
        self.backpressure = o.get("_generator_backpressure_num_objects") if self.nr < 0 else None
        re = o.get("retry_exceptions", False)
        self.retry_exceptions = list(re) if isinstance(re, (list, tuple)) else bool(re)
        self.resources = opts.resource_request(o, 1)
        self.strategy = opts.strategy_of(o)
        self.key = (tuple(sorted(self.resources.items())), repr(self.strategy))
        self.placement_options = placement.has_options(o)
        self.runtime_env = o.get("runtime_env")
        self.no_task_events = o.get("enable_task_events") is False


class _OptionsWrapper:
    """What ``f.options(...)`` returns: ``.remote()`` with those options."""

    def __init__(self, fn: RemoteFunction, options: dict) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits the task with these options."""
        return self._fn._submit(args, kwargs, self._options)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        """These options with some more overridden."""
        merged = dict(self._options)
        merged.update(opts.validate(task_options, actor=False, in_options=True))
        return _OptionsWrapper(self._fn, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node calling the function with these options."""
        self._fn._signature.check(args, kwargs)
        from skate.dag.function_node import FunctionNode

        return FunctionNode(self._fn, args, kwargs, self._options)
