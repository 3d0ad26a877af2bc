"""Remote functions: ``@skate.remote def f(...)`` and ``f.remote(...)``."""

from __future__ import annotations

import hashlib
from typing import Any

import cloudpickle

from skate._private import options as opts
from skate._private import runtime
from skate._private.config import CONFIG
from skate._private.core_worker.submitter import (
    TaskRecord,
    encode_args,
    make_returns,
    new_task_spec,
)


class RemoteFunction:
    """A function that runs as a task in a worker process."""

    def __init__(self, function: Any, options: dict) -> None:
        self._function = function
        self._options = opts.validate(options, actor=False)
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._pickled: tuple[bytes, bytes] | None = None
        self.__doc__ = getattr(function, "__doc__", None)
        self.__name__ = getattr(function, "__name__", "task")
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self.__name__}()', try '{self.__name__}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits the task; returns an ObjectRef (or a list, for num_returns != 1)."""
        return self._remote(args, kwargs, self._options)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        """The same function with some options overridden for the next calls."""
        merged = dict(self._options)
        merged.update(opts.validate(task_options, actor=False))
        return _OptionsWrapper(self, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy DAG node calling this function."""
        from skate.dag.function_node import FunctionNode

        return FunctionNode(self, args, kwargs, self._options)

    def _fn_bytes(self) -> tuple[bytes, bytes]:
        if self._pickled is None:
            from skate._private import serialization

            try:
                data = cloudpickle.dumps(self._function)
            except Exception as e:
                raise serialization.SerializationError(
                    serialization._explain(self._function, f"the remote function {self._name}", e)
                ) from e
            self._pickled = (hashlib.blake2b(data, digest_size=16).digest(), data)
        return self._pickled

    def _remote(self, args: tuple, kwargs: dict, o: dict) -> Any:
        core = runtime.current()
        fn_id, fn_bytes = self._fn_bytes()
        nr = o.get("num_returns", 1)
        if nr in ("streaming", "dynamic"):
            raise NotImplementedError("generator tasks (num_returns='streaming') are not supported yet")
        name = o.get("name") or self._name
        blob, arg_bufs, deps, keep = encode_args(core, args, kwargs, f"task {name}")
        task_id = core.new_task_id()
        rec = TaskRecord()
        max_retries = o.get("max_retries", CONFIG.task_max_retries)
        max_calls = o.get("max_calls")
        if max_calls is None:
            max_calls = 1 if o.get("num_gpus") else 0
        rec.spec = new_task_spec(core, task_id, name, fn_id, nr, max_calls, max_retries)
        rec.spec["a"] = blob
        rec.arg_bufs = arg_bufs
        rec.fn_id, rec.fn_bytes = fn_id, fn_bytes
        rec.deps = deps
        rec.keep = keep
        rec.name = name
        rec.retries_left = max_retries
        re = o.get("retry_exceptions", False)
        rec.retry_exceptions = list(re) if isinstance(re, (list, tuple)) else bool(re)
        rec.resources = opts.resource_request(o, 1)
        rec.strategy = opts.strategy_of(o)
        rec.key = (tuple(sorted(rec.resources.items())), repr(rec.strategy))
        refs = make_returns(core, task_id, nr, rec)
        if deps or not core.submitter.try_now(rec):
            core.submitter.submit_threadsafe(rec)
        if nr == 1:
            return refs[0]
        if nr == 0:
            return None
        return refs


class _OptionsWrapper:
    """What ``f.options(...)`` returns: ``.remote()`` with those options."""

    def __init__(self, fn: RemoteFunction, options: dict) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn._remote(args, kwargs, self._options)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        merged = dict(self._options)
        merged.update(opts.validate(task_options, actor=False))
        return _OptionsWrapper(self._fn, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from skate.dag.function_node import FunctionNode

        return FunctionNode(self._fn, args, kwargs, self._options)
