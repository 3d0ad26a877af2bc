"""Running tasks and actor methods inside a worker process.

A worker has two event loops.  The *exec loop* runs on the main thread and
serves the execution endpoint, where callers send ``push_task`` /
``create_actor`` / ``actor_call``: normal tasks and single-threaded actor
calls run right there, inline, in arrival order (each caller's submission
order), and the reply is sent from the same thread -- no hand-off between
threads on the way in or out.  Async actors use the exec loop as their
event loop; actors with ``max_concurrency > 1`` run calls on a thread pool.
The core worker's I/O loop (another thread) serves the control endpoint
(cancel, kill, ownership) and every request user code makes, so user code
may block in ``get`` without stalling the I/O it waits for.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import threading
from time import time as _now  # wall-clock seconds: task event timestamps
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import (
    cancellation,
    ids,
    proctitle,
    serialization,
    task_context,
    task_errors,
    wire,
)
from skate._private.config import CONFIG
from skate._private.core_worker import streams
from skate._private.core_worker.actor_exec import ActorExecution, ActorExit, Replier
from skate._private.core_worker.errors import error_payload
from skate._private.core_worker.memory_store import ERROR, INLINE, SHM
from skate._private.core_worker.task_spec import Arg
from skate.object_ref import ObjectRef

#: The methods every actor has (besides the user's): see ``Executor._method``.
_BUILTIN_METHODS = frozenset(("__ray_ready__", "__ray_terminate__", "__ray_call__"))


class _Withdrawn(BaseException):
    """Replaces an interrupt that came too late for its task (see ``Executor._finished``)."""


def _take_pending() -> None:
    """Does nothing; entering it is a point where CPython delivers a pending interrupt."""


class Executor(ActorExecution):
    """Executes the work pushed to one worker."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.exec_loop: asyncio.AbstractEventLoop | None = None
        self.functions: dict[bytes, Any] = {}
        self.calls: dict[bytes, int] = {}
        #: task id -> thread ident (0: a sync actor method, which a cancel does not interrupt), or an async call's task
        self.running: dict[bytes, Any] = {}
        #: Held while a cancel interrupts a thread and while a task ends, so
        #: an interrupt never lands in the task that thread runs next.
        self.run_lock = threading.Lock()
        self.cancelled: set[bytes] = set()
        self.interrupted: set[bytes] = set()  # tasks with an interrupt posted to their thread
        self.held: dict[bytes, tuple] = {}  # key -> (refs held for a caller, its connection): see hold
        self.acks = streams.Acks()  # generator tasks' consumed counts (backpressure)
        self.streamed: dict[bytes, int] = {}  # generator tasks running: items sent so far
        self._init_actor()

    def handlers(self) -> dict:
        """Handlers of the control endpoint (core worker's I/O loop)."""
        return {
            "cancel_task": self.on_cancel_task,
            "gen_ack": lambda conn, body, bufs: self.acks.on_ack(body),
            "release_held": self.on_release_held,
            "exit_now": self.on_exit_now,
            "actor_ready": self.on_actor_ready,
        }

    def exec_handlers(self) -> dict:
        """Handlers of the execution endpoint (the exec loop, main thread)."""
        return {
            "push_task": self.on_push_task,
            "create_actor": self.on_create_actor,
            "actor_call": self.on_actor_call,
            "release_held": self.on_release_held,
            "exit_now": self.on_exit_now,
            "hello": self.on_exec_hello,
        }

    def _inline(self, fn: Any, spec: dict, bufs: list, rep: Replier) -> None:
        """Runs user work on the exec loop's thread, with no loop marked running.

        (So user code may call ``asyncio.run`` and friends.)
        """
        prev = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            proctitle.run_titled(self, fn, spec, bufs, rep)
        finally:
            asyncio.events._set_running_loop(prev)

    # --- entry points (exec loop) --------------------------------------------------------
    def on_push_task(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        self._inline(self._run_task, spec, bufs, Replier(conn))
        return wire.DEFER

    def on_cancel_task(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        tid = body["t"]
        sent = cancellation.cancel_children(self.core, tid) if body.get("r", True) else 0
        with self.run_lock:
            # Marked first, then looked up: a task that ends meanwhile sees the
            # mark and waits for this lock (see _finished).
            self.interrupted.add(tid)
            running = self.running.get(tid)
            self.cancelled.add(tid)
            if running is None:
                self.interrupted.discard(tid)
                return
            if body.get("force"):
                if sent:  # let the children's cancels go out first
                    self.core.loop.call_later(0.1, os._exit, 1)
                    return
                os._exit(1)
            if isinstance(running, asyncio.Task):  # an async actor call: cancel the coroutine
                self.interrupted.discard(tid)
                self.actor_loop.call_soon_threadsafe(running.cancel)
                return
            if running == 0 or type(running) is tuple:  # a sync actor method, never interrupted: its reply says cancelled
                self.interrupted.discard(tid)
                return
            # Still this task's thread, and it cannot finish before the
            # interrupt is set: _finished takes the same lock and clears it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running), ctypes.py_object(KeyboardInterrupt))

    def _finished(self, tid: bytes) -> None:
        """Marks ``tid`` done on its thread; an interrupt meant for it that was not
        delivered yet is withdrawn, so it cannot hit the next task.

        CPython keeps its "asynchronous exception pending" flag raised until a
        thread actually takes one, even when an interrupt is cleared with
        ``PyThreadState_SetAsyncExc(ident, NULL)``; a raised flag sends every
        later bytecode check of the process down the slow path (and, on 3.11,
        loops forever under a profiler or tracer).  So a posted interrupt is
        never cleared: it is replaced by a private one that this thread takes
        here at once, which lowers the flag.
        """
        withdrawn = False
        while True:
            try:
                # No lock unless a cancel is under way: a canceller marks
                # ``interrupted`` before it looks at ``running`` (on_cancel_task).
                if not withdrawn and self.running.pop(tid, None) is not None and self.interrupted:
                    with self.run_lock:
                        if tid in self.interrupted:
                            self.interrupted.discard(tid)
                            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                                ctypes.c_ulong(threading.get_ident()), ctypes.py_object(_Withdrawn)
                            )
                            withdrawn = True
                while withdrawn:
                    _take_pending()
                return
            except _Withdrawn:
                return
            except KeyboardInterrupt:  # delivered just now: too late for the task, so dropped
                continue

    def hold(self, key: bytes, refs: list, conn: Any) -> None:
        """Keeps ``refs`` (inside a value sent to the caller on ``conn``) until the
        caller sends ``release_held`` with ``key``, or ``conn`` closes (it died)."""
        if conn is not None and conn.closed:
            return  # the caller is gone: nobody will take them over
        self.held[key] = (refs, conn)
        if conn is None:
            return
        keys = getattr(conn, "held_keys", None)
        if keys is None:
            keys = conn.held_keys = set()
            conn.on_close.append(self._holder_gone)
        keys.add(key)
        if conn.closed:  # (it closed just now: its callbacks may have run already)
            self._holder_gone(conn)

    def _holder_gone(self, conn: wire.Connection) -> None:
        keys = conn.held_keys
        while keys:  # (one by one: another thread may add one meanwhile)
            self.held.pop(keys.pop(), None)

    def on_release_held(self, conn: wire.Connection, key: bytes, bufs: list) -> None:
        entry = self.held.pop(key, None)
        if entry is not None and entry[1] is not None:
            entry[1].held_keys.discard(key)

    def _reply(self, fut: Replier, body: dict, bufs: list) -> None:
        core = self.core
        if core.deferred_borrows:  # arguments still referenced: borrowed from now on
            core.announce_deferred_borrows()
        if core.borrows_inflight:  # (flush_borrows, inlined: once per task)
            core.call(core.flush_borrows())
        fut.conn.reply(fut.rid, body, bufs)

    # --- tasks --------------------------------------------------------------------
    def _run_task(self, spec: dict, bufs: list, fut: Replier) -> None:
        tid = spec["t"]
        name = spec["n"]
        ctx = self.core.ctx
        self.core.job_id = spec["j"]
        self.core.namespace = spec.get("ns")
        pos = 0
        try:
            if spec["fb"]:
                fn = self.functions[spec["f"]] = cloudpickle.loads(bufs[0])
                pos = 1
            else:
                fn = self.functions[spec["f"]]
        except Exception as e:  # noqa: BLE001
            self._reply(fut, *self._error_reply(spec, e, name, "loading the function"))
            return
        ctx.task_id, ctx.name, ctx.lease_id = tid, name, spec.get("l")
        current = task_context.CURRENT.set(spec)
        events = self.core.task_events
        started = _now()
        if "ne" not in spec:  # (enable_task_events=False sets it)
            events.started(tid, name, started, getattr(fn, "__qualname__", name))
        error: BaseException | None = None
        try:
            try:
                # From here to _finished (and only here) a cancel interrupts this thread.
                self.running[tid] = threading.get_ident()
                if tid in self.cancelled:
                    raise exc.TaskCancelledError(tid.hex())
                args, kwargs = self._decode_args(spec, bufs, pos, fut.conn.peer)
                result = fn(*args, **kwargs)
                if spec["nr"] < 0:  # a generator task: items go out as they are yielded
                    body, out = streams.stream(self, fut, spec, result, name), []
                else:
                    body, out = self._encode_returns(spec, result, name, fut.conn)
                args = kwargs = result = None  # (refs in them that nothing else holds are not borrowed)
            finally:
                # First thing once the task's code is done: a cancel's interrupt
                # can no longer land (in the handlers below, say) after this.
                self._finished(tid)
        except KeyboardInterrupt:
            self.core.arg_scope.on = False  # (a cancel may land while arguments are decoded)
            error = exc.TaskCancelledError(tid.hex())
            body, out = self._error_reply(spec, error, name)
        except ActorExit:
            error = exc.RayError("exit_actor() called in a task")
            body, out = self._error_reply(spec, error, name)
        except BaseException as e:  # noqa: BLE001
            error = e
            body, out = self._error_reply(spec, e, name)
        finally:
            if "ne" not in spec:
                body["ts"] = [started, _now()]  # the owner reports how it ended
            if error is not None:
                cause = getattr(error, "cause", None) or error
                # The message with the remote traceback, as the caller's RayTaskError shows it.
                text = str(error) if isinstance(error, exc.RayError) else task_errors.user_traceback(error)
                body["err"] = [type(cause).__name__, text[-8000:]]
            task_context.CURRENT.reset(current)
            events.ended(tid)
            self.cancelled.discard(tid)
            ctx.task_id = ctx.lease_id = None
            ctx.name = None
        mc = spec.get("mc") or 0
        if mc:
            n = self.calls[spec["f"]] = self.calls.get(spec["f"], 0) + 1
            if n >= mc:
                body["x"] = 1
                self._reply(fut, body, out)
                self._exit_after_reply()
                return
        self._reply(fut, body, out)

    def _exit_after_reply(self) -> None:
        async def go() -> None:
            try:  # how its last tasks or calls ended, before it goes
                await asyncio.wait_for(self.core.task_events.send(), 1)
            except Exception:  # noqa: BLE001 - best effort: the control store may be gone
                pass
            await asyncio.sleep(0.01)
            os._exit(0)

        asyncio.run_coroutine_threadsafe(go(), self.core.loop)
        threading.Event().wait(5)

    def _decode_args(self, spec: dict, bufs: list, pos: int, caller: Any = None) -> tuple[list, dict]:
        """A task's arguments; ``caller``: its submitter's address, the owner of
        its shared-memory arguments (asked to rebuild one that is lost)."""
        scope = self.core.arg_scope
        scope.on = True  # (refs decoded here are borrowed only if they outlive the task: see refcount)
        try:
            core = self.core
            meta = spec.get("a")
            if meta is None:
                pa, kw = [], {}
            elif meta[0] == "i":
                n = meta[1]
                pa, kw = serialization.loads(bufs[pos], bufs[pos + 1 : pos + n])
                pos += n
            else:
                pa, kw = core.read_shm(core.call(core.shm_path(meta[1], meta[2])), meta[1])
            entries = spec.get("r")
            if not entries:
                return pa, kw
            values = []
            for entry in entries:
                kind = entry[0]
                if kind == "i":
                    n = entry[1]
                    values.append(serialization.loads(bufs[pos], bufs[pos + 1 : pos + n]))
                    pos += n
                elif kind == "s":
                    values.append(core.materialize(ObjectRef(entry[1], caller, _register=False), (SHM, None, [], entry[2], 0)))
                else:
                    ref = ObjectRef(entry[1], entry[2])
                    blocked = core.block(True)
                    try:
                        snap = core.call(core.fetch_remote(entry[1], entry[2]))
                    finally:
                        if blocked:
                            core.block(False)
                    values.append(core.materialize(ref, snap))
            pa = [values[a.i] if type(a) is Arg else a for a in pa]
            if kw:
                kw = {k: values[v.i] if type(v) is Arg else v for k, v in kw.items()}
            return pa, kw
        finally:
            scope.on = False

    def _encode_returns(self, spec: dict, result: Any, name: str, conn: Any = None) -> tuple[dict, list]:
        """A call's reply body and buffers (``conn``: the caller's connection; it owns
        values written to shared memory, and refs inside them are held for it)."""
        owner = None if conn is None else conn.peer
        nr = spec["nr"]
        tid = spec["t"]
        if nr == 1:  # (most calls: one value, no loop)
            meta, out, held = self.encode_value(tid, 0, result, name, owner)
            metas = [meta]
        else:
            if nr == 0:
                values = []
            elif inspect.isgenerator(result) or inspect.isasyncgen(result):
                values = streams.take(result, nr, name)
            else:
                if not isinstance(result, (tuple, list)) or len(result) != nr:
                    got = len(result) if isinstance(result, (tuple, list)) else "a non-sequence"
                    raise ValueError(f"{name} returned {got} values, but num_returns={nr}")
                values = list(result)
            metas, out, held = [], [], []
            for i, v in enumerate(values):
                meta, vout, refs = self.encode_value(tid, i, v, name, owner)
                metas.append(meta)
                out.extend(vout)
                held.extend(refs)
        body: dict = {"r": metas}
        if held:
            self.hold(tid, held, conn)
            body["h"] = [tid, [[r._id, r._owner] for r in held]]
        return body, out

    def encode_value(self, tid: bytes, index: int, value: Any, name: str, owner: Any = None) -> tuple[list, list, list]:
        """Return value ``index`` of task ``tid``: ``(meta, buffers, refs it contains)``.

        Small values travel inline; large ones go to this node's shared memory
        as object ``object_id_for(tid, index + 1)``, owned by ``owner`` (the caller).
        """
        data, vbufs, refs = serialization.dumps(value, ("the return value of ", name))
        size = len(data) + sum(b.nbytes for b in vbufs) if vbufs else len(data)
        if size <= CONFIG.max_inline_bytes:
            return [INLINE, len(vbufs) + 1], [data, *vbufs], refs
        self.core.write_shm(ids.object_id_for(tid, index + 1), data, vbufs, owner)  # the caller owns it
        return [SHM, 0, self.core.node_id, size], [], refs

    def flush_borrows(self) -> None:
        """Waits until the owners heard of every borrow this worker announced."""
        if self.core.borrows_inflight:
            self.core.call(self.core.flush_borrows())

    def _error_reply(self, spec: dict, e: BaseException, name: str, during: str = "") -> tuple[dict, list]:
        if isinstance(e, (exc.TaskCancelledError, exc.RayActorError, exc.WorkerCrashedError, exc.ObjectLostError)):
            err: BaseException = e
        else:
            err = task_errors.task_error(e, name, self.core, self.actor_name, self.actor_id)
        data, bufs = error_payload(err)
        nr = spec.get("nr", 1)
        if nr < 0:  # a generator task: the error is the item after the last one sent
            body = {"r": [[ERROR, len(bufs) + 1]], "g": self.streamed.pop(spec["t"], 0)}
            if nr == streams.DYNAMIC:
                body["dyn"] = 1
            return body, [data, *bufs]
        n = max(nr, 1)
        return {"r": [[ERROR, len(bufs) + 1]] * n}, [data, *bufs] * n

    def _method(self, spec: dict) -> Any:
        m = spec["m"]
        if m not in _BUILTIN_METHODS:
            return getattr(self.actor, m)
        if m == "__ray_ready__":
            return lambda: True
        if m == "__ray_terminate__":
            def terminate() -> None:
                raise ActorExit(0)

            return terminate
        # __ray_call__: fn(actor instance, *args, **kwargs), inside the actor (follows Ray)
        return lambda fn, *args, **kwargs: fn(self.actor, *args, **kwargs)

class OutputPrefixer:
    """Stands in for a worker's stdout/stderr and prefixes each line with ``(name pid=N)``."""

    def __init__(self, stream: Any, core: Any) -> None:
        self._stream = stream
        self._core = core
        self._pending: dict[int, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        ident = threading.get_ident()
        with self._lock:
            buf = self._pending.get(ident, "") + text
            lines = buf.split("\n")
            self._pending[ident] = lines.pop()
            if lines:
                name = getattr(self._core.ctx, "name", None) or self._core.executor.actor_name or "worker"
                prefix = f"({name} pid={self._core.pid}) "
                self._stream.write("".join(prefix + ln + "\n" for ln in lines))
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            for ident, rest in list(self._pending.items()):
                if rest:
                    name = getattr(self._core.ctx, "name", None) or "worker"
                    self._stream.write(f"({name} pid={self._core.pid}) {rest}\n")
                    self._pending[ident] = ""
            self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
