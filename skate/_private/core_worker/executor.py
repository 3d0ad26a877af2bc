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
import concurrent.futures
import ctypes
import inspect
import os
import sys
import threading
import traceback
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import ids, serialization, wire
from skate._private.config import CONFIG
from skate._private.core_worker.errors import EXITED, error_payload
from skate._private.core_worker.memory_store import ERROR, INLINE, SHM
from skate._private.core_worker.submitter import Arg


class ActorExit(SystemExit):
    """Raised by ``exit_actor()`` to end the actor after the current call."""


class Executor:
    """Executes the work pushed to one worker."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.exec_loop: asyncio.AbstractEventLoop | None = None
        self.functions: dict[bytes, Any] = {}
        self.calls: dict[bytes, int] = {}
        self.running: dict[bytes, int] = {}  # task id -> thread ident
        #: Held while a cancel interrupts a thread and while a task ends, so
        #: an interrupt never lands in the task that thread runs next.
        self.run_lock = threading.Lock()
        self.cancelled: set[bytes] = set()
        self.held: dict[bytes, list] = {}
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_name = ""
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_sem: asyncio.Semaphore | None = None
        self.detached = False
        self.exiting = False

    def handlers(self) -> dict:
        """Handlers of the control endpoint (core worker's I/O loop)."""
        return {
            "cancel_task": self.on_cancel_task,
            "release_held": self.on_release_held,
            "exit_now": self.on_exit_now,
        }

    def exec_handlers(self) -> dict:
        """Handlers of the execution endpoint (the exec loop, main thread)."""
        return {
            "push_task": self.on_push_task,
            "create_actor": self.on_create_actor,
            "actor_call": self.on_actor_call,
            "release_held": self.on_release_held,
            "exit_now": self.on_exit_now,
            "hello": _hello,
        }

    def _inline(self, fn: Any, spec: dict, bufs: list, rep: Replier) -> None:
        """Runs user work on the exec loop's thread, with no loop marked running.

        (So user code may call ``asyncio.run`` and friends.)
        """
        prev = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            fn(spec, bufs, rep)
        finally:
            asyncio.events._set_running_loop(prev)

    # --- entry points (exec loop) --------------------------------------------------------
    def on_push_task(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        self._inline(self._run_task, spec, bufs, Replier(conn))
        return wire.DEFER

    def on_create_actor(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        fut = Replier(conn)
        self.detached = bool(spec.get("detached"))
        if not self.detached:
            conn.on_close.append(self._owner_gone)
        self._inline(self._create_actor, spec, bufs, fut)
        return wire.DEFER

    def on_actor_call(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        fut = Replier(conn)
        if self.exiting:
            body, out = self._error_reply(spec, exc.ActorDiedError(error_msg=EXITED), spec.get("m", "?"))
            body["x"] = 1
            fut.send(body, out)
            return wire.DEFER
        if self.actor_loop is not None:
            task = asyncio.ensure_future(self._async_call(spec, bufs, fut))
            self.running[spec["t"]] = task
            task.add_done_callback(lambda t, tid=spec["t"]: self.running.pop(tid, None))
        elif self.actor_pool is not None:
            self.actor_pool.submit(self._run_call, spec, bufs, fut)
        else:
            self._inline(self._run_call, spec, bufs, fut)
        return wire.DEFER

    def on_cancel_task(self, conn: wire.Connection, body: dict, bufs: list) -> None:
        tid = body["t"]
        with self.run_lock:
            running = self.running.get(tid)
            if running is None:
                self.cancelled.add(tid)
                return
            if body.get("force"):
                os._exit(1)
            if isinstance(running, asyncio.Task):  # an async actor call: cancel the coroutine
                self.actor_loop.call_soon_threadsafe(running.cancel)
                return
            # Still this task's thread, and it cannot finish before the
            # interrupt is set: _finished takes the same lock and clears it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running), ctypes.py_object(KeyboardInterrupt))

    def _finished(self, tid: bytes) -> None:
        """Marks ``tid`` done on its thread; an interrupt meant for it that was not
        delivered yet is withdrawn, so it cannot hit the next task."""
        while True:
            try:
                with self.run_lock:
                    ident = self.running.pop(tid, None)
                    if ident is not None:
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
                return
            except KeyboardInterrupt:  # delivered just now: too late for the task, so dropped
                continue

    def on_release_held(self, conn: wire.Connection, tid: bytes, bufs: list) -> None:
        self.held.pop(tid, None)

    def on_exit_now(self, conn: wire.Connection, body: Any, bufs: list) -> None:
        # A graceful exit (all handles gone) comes on the exec endpoint once the
        # caller has no call in flight; a kill comes on the control endpoint.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _owner_gone(self, conn: wire.Connection) -> None:
        if not self.detached:
            os._exit(0)

    def _reply(self, fut: Replier, body: dict, bufs: list) -> None:
        if self.core.borrows_inflight:
            self.core.call(self.core.flush_borrows())
        fut.send(body, bufs)

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
        self.running[tid] = threading.get_ident()
        try:
            if tid in self.cancelled:
                raise exc.TaskCancelledError(tid.hex())
            args, kwargs = self._decode_args(spec, bufs, pos)
            result = fn(*args, **kwargs)
            body, out = self._encode_returns(spec, result, name, fut.conn.peer)
        except KeyboardInterrupt:
            body, out = self._error_reply(spec, exc.TaskCancelledError(tid.hex()), name)
        except ActorExit:
            body, out = self._error_reply(spec, exc.RayError("exit_actor() called in a task"), name)
        except BaseException as e:  # noqa: BLE001
            body, out = self._error_reply(spec, e, name)
        finally:
            self._finished(tid)
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
            await asyncio.sleep(0.01)
            os._exit(0)

        asyncio.run_coroutine_threadsafe(go(), self.core.loop)
        threading.Event().wait(5)

    def _decode_args(self, spec: dict, bufs: list, pos: int) -> tuple[list, dict]:
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
                values.append(core.read_shm(core.call(core.shm_path(entry[1], entry[2])), entry[1]))
            else:
                from skate.object_ref import ObjectRef

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

    def _encode_returns(self, spec: dict, result: Any, name: str, owner: Any = None) -> tuple[dict, list]:
        nr = spec["nr"]
        if nr == 1:
            values = [result]
        elif nr == 0:
            values = []
        else:
            if not isinstance(result, (tuple, list)) or len(result) != nr:
                got = len(result) if isinstance(result, (tuple, list)) else "a non-sequence"
                raise ValueError(f"{name} returned {got} values, but num_returns={nr}")
            values = list(result)
        metas: list = []
        out: list = []
        held: list = []
        tid = spec["t"]
        for i, v in enumerate(values):
            data, vbufs, refs = serialization.dumps(v, f"the return value of {name}")
            size = len(data) + sum(b.nbytes for b in vbufs)
            if size <= CONFIG.max_inline_bytes:
                metas.append([INLINE, len(vbufs) + 1])
                out.append(data)
                out.extend(vbufs)
            else:
                oid = ids.object_id_for(tid, i + 1)
                self.core.write_shm(oid, data, vbufs, owner)  # the caller owns it
                metas.append([SHM, 0, self.core.node_id, size])
            held.extend(refs)
        body: dict = {"r": metas}
        if held:
            self.held[tid] = held
            body["h"] = [tid, [[r._id, r._owner] for r in held]]
        return body, out

    def _error_reply(self, spec: dict, e: BaseException, name: str, during: str = "") -> tuple[dict, list]:
        if isinstance(e, (exc.TaskCancelledError, exc.RayActorError, exc.WorkerCrashedError, exc.ObjectLostError)):
            err: BaseException = e
        else:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            cause = e.cause if isinstance(e, exc.RayTaskError) else e
            if isinstance(cause, serialization.SerializationError):
                cause = TypeError(str(cause))
            try:
                cloudpickle.dumps(cause)
            except Exception:  # noqa: BLE001
                cause = None
            err = exc.RayTaskError(name, tb, cause, actor_repr=self.actor_name or None)
        data, bufs = error_payload(err)
        n = max(spec.get("nr", 1), 1)
        return {"r": [[ERROR, len(bufs) + 1]] * n}, [data, *bufs] * n

    # --- actors -----------------------------------------------------------------------
    def _create_actor(self, spec: dict, bufs: list, fut: Replier) -> None:
        name = spec["n"]
        ctx = self.core.ctx
        self.core.job_id = spec["j"]
        self.core.namespace = spec.get("ns")
        self.actor_id = spec["aid"]
        try:
            cls = cloudpickle.loads(bufs[0])
            self.actor_name = cls.__name__
            ctx.name = self.actor_name
            args, kwargs = self._decode_args(spec, bufs, 1)
            is_async = any(
                inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
                for _, m in inspect.getmembers(cls, inspect.isfunction)
            )
            mc = spec.get("mcc")
            if is_async:
                # The exec loop (this thread's) is the actor's event loop.
                self.actor_loop = self.exec_loop
                self.actor_sem = asyncio.Semaphore(mc or 1000)
                self.actor = cls(*args, **kwargs)
            else:
                self.actor = cls(*args, **kwargs)
                if mc and mc > 1:
                    self.actor_pool = concurrent.futures.ThreadPoolExecutor(mc, thread_name_prefix="actor")
            self._reply(fut, {"ok": 1, "pid": os.getpid()}, [])
        except BaseException as e:  # noqa: BLE001
            body, out = self._error_reply(dict(spec, nr=1), e, f"{name}.__init__")
            body["ok"] = 0
            self._reply(fut, body, out)
            self.exiting = True

    def _method(self, spec: dict) -> Any:
        m = spec["m"]
        if m == "__ray_ready__":
            return lambda: True
        if m == "__ray_terminate__":
            def terminate() -> None:
                raise ActorExit(0)

            return terminate
        return getattr(self.actor, m)

    def _run_call(self, spec: dict, bufs: list, fut: Replier) -> None:
        ctx = self.core.ctx
        tid = spec["t"]
        name = f"{self.actor_name}.{spec['m']}"
        ctx.task_id, ctx.name = tid, self.actor_name
        self.running[tid] = threading.get_ident()
        exiting = False
        try:
            if self.actor is None:
                raise exc.ActorDiedError(error_msg="the actor's constructor failed")
            args, kwargs = self._decode_args(spec, bufs, 0)
            result = self._method(spec)(*args, **kwargs)
            body, out = self._encode_returns(spec, result, name, fut.conn.peer)
        except ActorExit:
            exiting = self.exiting = True
            body, out = self._error_reply(spec, exc.ActorDiedError(error_msg=EXITED), name)
        except KeyboardInterrupt:
            body, out = self._error_reply(spec, exc.TaskCancelledError(tid.hex()), name)
        except BaseException as e:  # noqa: BLE001
            body, out = self._error_reply(spec, e, name)
        finally:
            self._finished(tid)
            ctx.task_id = None
        if exiting:
            body["x"] = 1
            self.core.call(self._notify_exit())
        self._reply(fut, body, out)
        if exiting:
            self._exit_after_reply()

    async def _notify_exit(self) -> None:
        """Marks the actor dead in the control store before anyone hears of the exit."""
        try:
            gcs = await self.core.gcs()
            await asyncio.wait_for(gcs.request("update_actor", {"actor_id": self.actor_id, "state": "DEAD", "cause": EXITED}), 5)
        except Exception:  # noqa: BLE001
            pass

    async def _async_call(self, spec: dict, bufs: list, fut: Replier) -> None:
        name = f"{self.actor_name}.{spec['m']}"
        exiting = False
        async with self.actor_sem:
            try:
                args, kwargs = self._decode_args(spec, bufs, 0)
                method = self._method(spec)
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                body, out = self._encode_returns(spec, result, name, fut.conn.peer)
            except ActorExit:
                exiting = self.exiting = True
                body, out = self._error_reply(spec, exc.ActorDiedError(error_msg=EXITED), name)
            except asyncio.CancelledError:
                body, out = self._error_reply(spec, exc.TaskCancelledError(spec["t"].hex()), name)
            except BaseException as e:  # noqa: BLE001
                body, out = self._error_reply(spec, e, name)
        if self.core.borrows_inflight:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.core.flush_borrows(), self.core.loop))
        if exiting:
            body["x"] = 1
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._notify_exit(), self.core.loop))
        fut.send(body, out)
        if exiting:
            self.core.post(lambda: self.core.loop.call_later(0.05, os._exit, 0))


def _hello(conn: wire.Connection, addr: list, bufs: list) -> None:
    conn.peer = addr  # the caller's address: it owns the results we write


class Replier:
    """Answers one request straight from the thread that did the work."""

    __slots__ = ("conn", "rid")

    def __init__(self, conn: wire.Connection) -> None:
        self.conn = conn
        self.rid = conn.current_rid

    def send(self, body: dict, bufs: list) -> None:
        self.conn.reply(self.rid, body, bufs)


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
