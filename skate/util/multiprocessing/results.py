"""Results of ``Pool``: ``AsyncResult`` and the ``imap`` iterators (follow Ray / multiprocessing).

Work goes to the pool's actors in *batches* (chunks): one actor call runs
``func`` over several arguments and returns a list with one entry per
argument -- the value, or a ``TaskError`` for an argument whose call raised.
A batch whose actor died comes back as the ``RayError`` of the whole call.

``AsyncResult`` holds the refs of a fixed set of batches; it needs a thread
only when it has a callback to run as soon as the batches are in.  The imap
iterators keep one batch in flight per actor and send the next one from the
caller's thread whenever one finishes while the caller waits.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError as MPTimeoutError
from multiprocessing.pool import RemoteTraceback
from typing import Any

from skate import exceptions as exc
from skate._private import api


class TaskError:
    """An exception raised by ``func`` for one argument, with its traceback text."""

    def __init__(self, error: BaseException, tb: str) -> None:
        self.error = error
        self.tb = tb

    def raise_it(self) -> None:
        raise self.error from RemoteTraceback(self.tb)


def fetch_batch(ref: Any) -> list:
    """The entries of one batch; a failed call counts as one error entry."""
    try:
        return api.get(ref)
    except exc.RayError as e:
        return [e]


def is_error(entry: Any) -> bool:
    return isinstance(entry, (TaskError, BaseException))


def raise_entry(entry: Any) -> None:
    if isinstance(entry, TaskError):
        entry.raise_it()
    raise entry


def error_of(entry: Any) -> BaseException:
    return entry.error if isinstance(entry, TaskError) else entry


def _wait_all(refs: list, timeout: float | None) -> bool:
    if not refs:
        return True
    ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
    return len(ready) == len(refs)


class AsyncResult:
    """The pending result of ``apply_async`` / ``map_async`` / ``starmap_async``.

    Do not create it directly.  ``callback`` gets the result (a list, or the
    single value of ``apply_async``) once every batch is in and none failed;
    otherwise ``error_callback`` gets the first error.  Both run on a helper
    thread of this process.
    """

    def __init__(
        self,
        refs: list,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        single_result: bool = False,
    ) -> None:
        self._refs = list(refs)
        self._single = single_result
        self._batches: list | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if callback is not None or error_callback is not None:
            self._thread = threading.Thread(
                target=self._run_callbacks, args=(callback, error_callback), name="skate-pool-result", daemon=True
            )
            self._thread.start()

    def _collect(self) -> list:
        with self._lock:
            if self._batches is None:
                self._batches = [fetch_batch(r) for r in self._refs]
            return self._batches

    def _run_callbacks(self, callback: Callable | None, error_callback: Callable | None) -> None:
        batches = self._collect()
        entries = [e for b in batches for e in b]
        first_error = next((e for e in entries if is_error(e)), None)
        if first_error is not None:
            if error_callback is not None:
                error_callback(error_of(first_error))
        elif callback is not None:
            callback(entries[0] if self._single else entries)

    def wait(self, timeout: float | None = None) -> None:
        """Returns once the result is ready (callbacks done) or ``timeout`` seconds passed."""
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            _wait_all(self._refs, timeout)

    def ready(self) -> bool:
        """True once every batch has finished (and its callback has run)."""
        if self._thread is not None:
            return not self._thread.is_alive()
        return _wait_all(self._refs, 0)

    def successful(self) -> bool:
        """True if no call raised.

        Raises:
            ValueError: if the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not any(is_error(e) for b in self._collect() for e in b)

    def get(self, timeout: float | None = None) -> Any:
        """The result: a list in argument order, or the single value of ``apply_async``.

        Raises:
            multiprocessing.TimeoutError: if it is not ready within ``timeout`` seconds.
            Exception: the first error ``func`` raised (with the remote
                traceback as its ``__cause__``), or the ``RayError`` of a
                batch whose actor died.
        """
        self.wait(timeout)
        if not self.ready():
            raise MPTimeoutError
        entries = []
        for batch in self._collect():
            for e in batch:
                if is_error(e):
                    raise_entry(e)
            entries.extend(batch)
        return entries[0] if self._single else entries


class IMapIterator:
    """Iterator over the results of ``imap`` (ordered) or ``imap_unordered``.

    Each actor has at most one batch in flight; the next batch goes out as
    soon as one finishes while ``next`` waits.  ``next(timeout)`` raises
    ``multiprocessing.TimeoutError`` when nothing is ready in time; an error
    raised by ``func`` is raised by the ``next`` call that reaches it.
    """

    def __init__(self, submit: Callable[[int, list], Any], n_actors: int, func_args: Iterator, chunksize: int,
                 ordered: bool) -> None:
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        self._submit = submit  # (actor index, batch of args) -> ref
        self._args = func_args
        self._chunksize = chunksize
        self._ordered = ordered
        self._exhausted = False
        self._inflight: dict[Any, tuple[int, int]] = {}  # ref -> (chunk index, actor index)
        self._done: dict[int, list] = {}  # finished chunks not yet handed out (ordered)
        self._next_chunk = 0  # next chunk to hand out (ordered)
        self._chunks_sent = 0
        self._out: deque = deque()
        for actor in range(n_actors):
            if not self._send(actor):
                break

    def _send(self, actor: int) -> bool:
        if self._exhausted:
            return False
        batch = list(itertools.islice(self._args, self._chunksize))
        if len(batch) < self._chunksize:
            self._exhausted = True
        if not batch:
            return False
        ref = self._submit(actor, batch)
        self._inflight[ref] = (self._chunks_sent, actor)
        self._chunks_sent += 1
        return True

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; waits up to ``timeout`` seconds (None: no limit).

        Raises:
            StopIteration: when every result was handed out.
            multiprocessing.TimeoutError: if no result is ready in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._out:
            if self._ordered and self._next_chunk in self._done:
                self._out.extend(self._done.pop(self._next_chunk))
                self._next_chunk += 1
                continue
            if not self._inflight:
                raise StopIteration
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = api.wait(list(self._inflight), num_returns=1, timeout=left)
            if not ready:
                raise MPTimeoutError
            for ref in ready:
                chunk, actor = self._inflight.pop(ref)
                self._send(actor)  # keep that actor busy
                entries = fetch_batch(ref)
                if self._ordered:
                    self._done[chunk] = entries
                else:
                    self._out.extend(entries)
        entry = self._out.popleft()
        if is_error(entry):
            raise_entry(entry)
        return entry


__all__ = ["AsyncResult", "IMapIterator", "TaskError"]
