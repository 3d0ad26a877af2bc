"""``Pool``: ``multiprocessing.Pool``'s API over skate actors (follows Ray).

Each pool "process" is an actor; it can live on any node of the cluster.
The pool deals work out round-robin in batches (one actor call runs the
function over a chunk of arguments), so a map of many small calls costs a
few actor calls, not one per argument:

    map(f, args) -> chunks -> actor k: run_batch(f, chunk) -> [value | TaskError, ...]
                                                  |
    AsyncResult / IMapIterator  <-- refs ---------+

``maxtasksperchild`` counts batches: an actor that ran that many is asked
to exit (after the work already queued on it) and a fresh one takes its
place.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import skate
from skate import exceptions as exc
from skate._private import api
from skate.util.multiprocessing.results import AsyncResult, IMapIterator, TaskError


class _PoolActor:
    """One pool process: runs the initializer once, then batches of calls."""

    def __init__(self, initializer: Callable | None, initargs: tuple | None) -> None:
        if initializer is not None:
            initializer(*(initargs or ()))

    def ping(self) -> int:
        return os.getpid()

    def run_batch(self, func: Callable, batch: list) -> list:
        out = []
        for args, kwargs in batch:
            try:
                out.append(func(*(args or ()), **(kwargs or {})))
            except Exception as e:  # noqa: BLE001 - handed back to the caller per argument
                out.append(TaskError(e, traceback.format_exc()))
        return out


class Pool:
    """A pool of actor processes with ``multiprocessing.Pool``'s API (follows Ray).

    Args:
        processes: Number of actors.  Default: the cluster's CPU count.
        initializer: Called as ``initializer(*initargs)`` in each actor when
            it starts.
        initargs: Arguments of ``initializer``.
        maxtasksperchild: Batches an actor runs before it is replaced by a
            fresh one (None: no limit).
        context: A multiprocessing context; it has no meaning for actors and
            is ignored with a warning, as in Ray.
        ray_address: Cluster to connect to when this process is not yet
            connected (``skate.init(address=...)``); default: the
            ``SKATE_ADDRESS`` environment variable, else a new local
            cluster with ``processes`` CPUs.
        ray_remote_args: Options of the actors (``.options(**ray_remote_args)``),
            e.g. ``{"num_cpus": 1}`` or a scheduling strategy.

    Raises:
        ValueError: if ``processes`` is not positive or exceeds the cluster's
            CPUs, ``maxtasksperchild`` is not a positive int, or an actor
            option is invalid.
        TypeError: if ``initializer`` is not callable.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict | None = None,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or isinstance(maxtasksperchild, bool) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if context is not None:
            warnings.warn(
                "The 'context' argument of Pool is ignored: skate's pool processes are actors, "
                "started by the cluster, not by a multiprocessing context.",
                stacklevel=2,
            )
        self._closed = False
        self._initializer = initializer
        self._initargs = tuple(initargs) if initargs is not None else None
        self._maxtasksperchild = maxtasksperchild
        self._actor_class = skate.remote(_PoolActor).options(**(ray_remote_args or {}))
        self._stopping: list = []  # refs of __ray_terminate__ calls not yet seen to finish
        self._next_index = 0
        processes = self._connect(processes, ray_address)
        # (actor, batches sent to it)
        self._actors: list[list] = [[self._actor_class.remote(initializer, self._initargs), 0] for _ in range(processes)]
        try:
            api.get([a.ping.remote() for a, _ in self._actors])
        except BaseException:
            for a, _ in self._actors:
                api.kill(a)
            raise

    @staticmethod
    def _connect(processes: int | None, address: str | None) -> int:
        if not api.is_initialized():
            if address is not None:
                api.init(address=address)
            elif os.environ.get("SKATE_ADDRESS"):
                api.init()
            else:
                api.init(num_cpus=processes)
        cpus = int(api.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = cpus
        if processes <= 0:
            raise ValueError("Processes in the pool must be >0.")
        if cpus < processes:
            raise ValueError(
                f"Tried to start a pool with {processes} processes on an existing cluster, "
                f"but there are only {cpus} CPUs in the cluster."
            )
        return processes

    # --- dealing out batches -------------------------------------------------------------
    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _round_robin(self) -> int:
        i = self._next_index
        self._next_index = (i + 1) % len(self._actors)
        return i

    def _run_batch(self, index: int, func: Callable, batch: list) -> Any:
        """Sends one batch of ``(args, kwargs)`` to actor ``index``; returns its ref."""
        entry = self._actors[index]
        ref = entry[0].run_batch.remote(func, batch)
        entry[1] += 1
        if self._maxtasksperchild is not None and entry[1] >= self._maxtasksperchild:
            self._stop_actor(entry[0])
            self._actors[index] = [self._actor_class.remote(self._initializer, self._initargs), 0]
        return ref

    def _stop_actor(self, actor: Any) -> None:
        """Asks ``actor`` to exit once the work already queued on it is done."""
        self._reap_stopped(timeout=0)
        self._stopping.append(actor.__ray_terminate__.remote())

    def _reap_stopped(self, timeout: float | None) -> None:
        if not self._stopping:
            return
        ready, self._stopping = api.wait(self._stopping, num_returns=len(self._stopping), timeout=timeout)
        for ref in ready:  # the reply of an intentional exit: read so it is not reported
            try:
                api.get(ref, timeout=0)
            except exc.RayError:
                pass

    def _chunked_refs(self, func: Callable, iterable: Iterable, chunksize: int | None, star: bool) -> list:
        args = list(iterable)
        if chunksize is None:
            chunksize = self._default_chunksize(len(args))
        elif chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        refs = []
        for k in range(0, len(args), chunksize):
            batch = [(_as_args(a, star), None) for a in args[k : k + chunksize]]
            refs.append(self._run_batch(len(refs) % len(self._actors), func, batch))
        return refs

    def _default_chunksize(self, n: int) -> int:
        chunksize, extra = divmod(n, len(self._actors) * 4)
        return max(1, chunksize + (1 if extra else 0))

    # --- the multiprocessing.Pool API ----------------------------------------------------
    def apply(self, func: Callable, args: tuple | None = None, kwargs: dict | None = None, *,
              kwds: dict | None = None) -> Any:
        """Runs ``func(*args, **kwargs)`` on one of the actors and returns its result.

        ``kwds`` is ``multiprocessing``'s name for ``kwargs``.

        Raises:
            ValueError: if the pool is closed.
            Exception: what ``func`` raised.
        """
        return self.apply_async(func, args, kwargs, kwds=kwds).get()

    def apply_async(
        self,
        func: Callable,
        args: tuple | None = None,
        kwargs: dict | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        kwds: dict | None = None,
    ) -> AsyncResult:
        """Like ``apply`` but returns an ``AsyncResult`` at once.

        ``callback`` gets the result if the call succeeds, ``error_callback``
        the exception if it raises.

        Raises:
            ValueError: if the pool is closed, or both ``kwargs`` and ``kwds`` are given.
        """
        self._check_running()
        if kwds is not None:
            if kwargs is not None:
                raise ValueError("give kwargs or kwds, not both")
            kwargs = kwds
        ref = self._run_batch(self._round_robin(), func, [(tuple(args or ()), kwargs)])
        return AsyncResult([ref], callback, error_callback, single_result=True)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, run in batches of ``chunksize`` over the actors.

        Raises:
            ValueError: if the pool is closed.
            Exception: the first error ``func`` raised.
        """
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable[[list], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Like ``map`` but returns an ``AsyncResult`` at once.

        ``callback`` gets the whole list once every call succeeded;
        otherwise ``error_callback`` gets the first error.
        """
        self._check_running()
        return AsyncResult(self._chunked_refs(func, iterable, chunksize, star=False), callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, like ``map``."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable[[list], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Like ``starmap`` but returns an ``AsyncResult`` at once (callbacks as ``map_async``)."""
        self._check_running()
        return AsyncResult(self._chunked_refs(func, iterable, chunksize, star=True), callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """Results of ``func`` over ``iterable`` in order, as they come.

        Arguments are read from ``iterable`` lazily, one batch per actor at a
        time, so it may be long or endless.
        """
        self._check_running()
        return IMapIterator(self._submit_chunk(func), len(self._actors), iter(iterable), chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """Like ``imap`` but yields results in the order they finish."""
        self._check_running()
        return IMapIterator(self._submit_chunk(func), len(self._actors), iter(iterable), chunksize, ordered=False)

    def _submit_chunk(self, func: Callable) -> Callable[[int, list], Any]:
        def submit(index: int, chunk: list) -> Any:
            return self._run_batch(index, func, [((a,), None) for a in chunk])

        return submit

    # --- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Accepts no more work; the actors exit once the work sent to them is done."""
        if self._closed:
            return
        for actor, _ in self._actors:
            self._stop_actor(actor)
        self._closed = True

    def terminate(self) -> None:
        """Stops the actors at once; work still running or queued fails."""
        self.close()
        for actor, _ in self._actors:
            api.kill(actor)
        self._reap_stopped(timeout=30)

    def join(self) -> None:
        """Waits for the actors of a closed pool to exit.

        Raises:
            ValueError: if the pool was not closed or terminated first.
        """
        if not self._closed:
            raise ValueError("Pool is still running")
        self._reap_stopped(timeout=None)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()


def _as_args(item: Any, star: bool) -> tuple:
    return tuple(item) if star else (item,)


__all__ = ["Pool"]
