"""Running an actor inside its worker: construction, calls, concurrency groups, exit.

``ActorExecution`` is one part of the worker's ``Executor`` (see
``executor``).  Where a call runs::

    actor_call --> async actor:   a coroutine on the exec loop, under its group's semaphore
               --> threaded actor (max_concurrency > 1 or concurrency groups):
                                  its group's thread pool (one pool per group)
               --> otherwise:     inline on the exec loop's thread

``__ray_ready__`` is answered at once, outside every group (the *system
group*): callers send it to the control endpoint, served by the core
worker's I/O thread, so even a sync actor busy in a call says it is ready.

How an actor ends, and what runs::

    exit_actor() / __ray_terminate__  -> the call's caller gets RayActorError,
        queued calls fail with RayActorError; the control store hears "DEAD"
        first; then __ray_shutdown__ and atexit handlers run once; exit
    exit_now {"graceful": true}       -> (every handle gone; driver shutdown)
                                         __ray_shutdown__ and atexit, then exit
    exit_now (kill) / owner gone      -> exit at once, no hooks
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import inspect
import os
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import task_context, wire
from skate._private.core_worker import streams, task_events
from skate._private.core_worker.errors import EXITED

DEFAULT_GROUP = "_ray_default"
#: The cause of death of an actor ended gracefully from outside (handles gone, owner's shutdown).
GRACEFUL = "the actor was ended gracefully (all handles to it are gone, or its owner shut down)"


class ActorExit(SystemExit):
    """Raised by ``exit_actor()`` in a sync method: ends the actor after the current call."""


class ActorExecution:
    """Actor handlers and state of an ``Executor`` (a mixin: see ``executor``)."""

    core: Any
    exec_loop: asyncio.AbstractEventLoop | None

    def _init_actor(self) -> None:
        self.call_events = task_events.ActorCallEvents(self.core)
        self.actor_spec: dict | None = None
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_name = ""
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_sem: CallSlots | None = None
        #: Concurrency groups: name -> thread pool (threaded) or semaphore (async).
        self.group_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self.group_sems: dict[str, CallSlots] = {}
        self.detached = False
        self.exiting = False  # no new call starts (set by _mark_exiting)
        #: Requests run in the exec loop's thread as they arrive (read by ``wire.ReadOn``):
        #: a task worker or a sync actor that is not exiting; a threaded or async actor hands them on.
        self.serves_inline = True
        self.exit_requested = False  # exit_actor() was called
        self.exit_started = False
        self.hooks_done = False
        self.reconstructed = False
        self.sync_busy = False
        self.exit_thread = 0  # the thread whose call asked to exit
        #: One entry per call on a pool thread (counted before it checks ``exiting``);
        #: once the actor exits, each one that ends notifies ``pool_idle``.
        self.pool_calls: list[None] = []
        self.pool_idle = threading.Condition()

    def _mark_exiting(self) -> None:
        """No new call starts (the one place ``exiting`` is set)."""
        self.exiting = True
        self.serves_inline = False

    # --- exit_actor() ------------------------------------------------------------
    def request_exit(self) -> None:
        """``exit_actor()`` in this actor: ends it once the current call (or constructor) returns."""
        self.exit_requested = True
        self.exit_thread = threading.get_ident()
        if self.exec_loop is not None:
            # (exit_actor() in a background coroutine or thread: no call returns to end the actor)
            self.exec_loop.call_soon_threadsafe(self._exit_if_idle)
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if in_loop and self.actor_loop is not None:
            raise exc.AsyncioActorExit("exit_actor() was called")
        raise ActorExit(0)

    def _exit_if_idle(self) -> None:
        if self.exit_started or self.actor is None or self.sync_busy or self.running:
            return  # a running call (or the constructor) ends the actor when it returns
        self._begin_exit(EXITED)

    def _begin_exit(self, cause: str | None) -> None:
        """Ends the actor (on the exec loop's thread): tells the control store, runs the hooks, exits."""
        if self.exit_started:
            return
        self.exit_started = True
        self._mark_exiting()
        if cause is not None:
            self.core.call(self._notify_exit(cause))
        if self.actor_pool is not None or self.group_pools:
            # Threaded actor: calls already running on other threads finish and
            # reply first; calls not started yet fail (follows Ray).
            with self.pool_idle:
                self.pool_idle.wait_for(lambda: not self.pool_calls, timeout=60)
        self._run_shutdown_hooks()
        self._exit_after_reply()

    def _run_shutdown_hooks(self) -> None:
        """``__ray_shutdown__`` and ``atexit`` handlers, once (graceful ends only; follows Ray)."""
        if self.hooks_done:
            return
        self.hooks_done = True
        if self.actor is not None and hasattr(type(self.actor), "__ray_shutdown__"):
            try:
                self.actor.__ray_shutdown__()
            except BaseException:  # noqa: BLE001 - reported, the actor still ends
                traceback.print_exc()
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()

    async def _notify_exit(self, cause: str) -> None:
        """Marks the actor dead in the control store before anyone hears of the exit."""

        async def tell() -> None:
            gcs = await self.core.gcs()
            await gcs.request("update_actor", {"actor_id": self.actor_id, "state": "DEAD", "cause": cause})

        try:
            await asyncio.wait_for(tell(), 5)
        except Exception:  # noqa: BLE001
            pass

    def _exited_reply(self, spec: dict) -> tuple[dict, list]:
        if spec.get("m") == "__ray_terminate__":  # asked for: its caller gets None
            body, out = self._encode_returns(spec, None, "__ray_terminate__")
            body["x"] = 1
            return body, out
        body, out = self._error_reply(spec, exc.ActorDiedError(error_msg=EXITED), spec.get("m", "?"))
        body["x"] = 1
        return body, out

    # --- handlers (exec loop) ------------------------------------------------------------
    def on_create_actor(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        fut = Replier(conn)
        self.detached = bool(spec.get("detached"))
        if not self.detached and not spec.get("gc"):
            # (Created by the control store: it ends the actor when its owner goes.)
            conn.on_close.append(self._owner_gone)
        self._inline(self._create_actor, spec, bufs, fut)
        return wire.DEFER

    def on_actor_call(self, conn: wire.Connection, spec: dict, bufs: list) -> Any:
        fut = Replier(conn)
        if self.exiting:
            fut.send(*self._exited_reply(spec))
            return wire.DEFER
        if self.actor_loop is not None:
            # (the coroutine takes itself out of ``running`` when it ends: no done callback to schedule)
            self.running[spec["t"]] = self.actor_loop.create_task(self._async_call(spec, bufs, fut))
        elif self.actor_pool is not None or self.group_pools:
            if spec["m"] == "__ray_ready__":
                self._inline(self._run_call_here, spec, bufs, fut)
                return wire.DEFER
            pool = self._pool_for(spec.get("cg"))
            if pool is None:
                fut.send(*self._error_reply(spec, ValueError(f"the actor has no concurrency group {spec.get('cg')!r}"), spec["m"]))
            else:
                pool.submit(self._run_call, spec, bufs, fut)
        else:
            self._inline(self._run_call_here, spec, bufs, fut)
        return wire.DEFER

    def on_actor_ready(self, conn: wire.Connection, spec: dict, bufs: list) -> wire.Reply:
        """``__ray_ready__`` on the control endpoint (the system group): answered
        at once, even while a call runs on the exec endpoint."""
        if self.exiting:
            return wire.Reply(*self._exited_reply(spec))
        return wire.Reply(*self._encode_returns(spec, True, f"{self.actor_name}.__ray_ready__"))

    def on_exec_hello(self, conn: wire.Connection, addr: list, bufs: list) -> None:
        """A caller introduces itself (its address: it owns the results we write).

        The owner of an actor the control store created connects after the
        creation; the actor ends with that connection (as with the creation's
        own connection otherwise), also when the control store lost track of
        the owner (a restart of a durable control store).
        """
        conn.peer = addr
        owner = (self.actor_spec or {}).get("ow")
        if owner is not None and addr and addr[0] == owner and not self.detached:
            conn.on_close.append(self._owner_gone)

    def on_exit_now(self, conn: wire.Connection, body: Any, bufs: list) -> None:
        # A graceful exit (all handles gone, driver shutdown) comes on the exec
        # endpoint once the caller has no call in flight: hooks run.  A kill
        # comes on the control endpoint: the process ends at once.
        if body and body.get("graceful") and threading.current_thread() is threading.main_thread():
            self._mark_exiting()
            if self.actor_id is not None:  # an intended end: the control store must not restart it
                self.core.call(self._notify_exit(body.get("cause") or GRACEFUL))
            self._run_shutdown_hooks()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _owner_gone(self, conn: wire.Connection) -> None:
        if not self.detached and not self.exit_started:
            os._exit(0)

    # --- construction ---------------------------------------------------------------------
    def _create_actor(self, spec: dict, bufs: list, fut: Replier) -> None:
        name = spec["n"]
        ctx = self.core.ctx
        self.core.job_id = spec["j"]
        self.core.namespace = spec.get("ns")
        self.actor_id = spec["aid"]
        self.call_events.set_actor(self.actor_id, self.running)  # (sync calls in flight: (name, start))
        self.actor_spec = spec
        self.reconstructed = bool(spec.get("rs"))
        current = task_context.CURRENT.set(spec)
        started = task_events.now()
        error: BaseException | None = None
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
            groups = spec.get("cgs") or {}
            if is_async:
                # The exec loop (this thread's) is the actor's event loop.
                self.actor_loop = self.exec_loop
                self.actor_sem = CallSlots(mc or 1000)
                self.group_sems = {g: CallSlots(n) for g, n in groups.items()}
            elif groups:
                self.group_pools = {
                    g: concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix=f"actor-{g}") for g, n in groups.items()
                }
                self.actor_pool = concurrent.futures.ThreadPoolExecutor(mc or 1, thread_name_prefix="actor")
            elif mc and mc > 1:
                self.actor_pool = concurrent.futures.ThreadPoolExecutor(mc, thread_name_prefix="actor")
            self.serves_inline = self.serves_inline and not (is_async or groups or (mc and mc > 1))
            try:
                self.actor = cls(*args, **kwargs)
            except (ActorExit, exc.AsyncioActorExit):
                self.exit_requested = True
            if self.exit_requested:
                # exit_actor() in the constructor: created, then ended (follows Ray).
                self.actor = self.actor or _Ended()
                self.core.call(self._notify_exit(EXITED))
                self._reply(fut, {"ok": 1, "pid": os.getpid()}, [])
                self._begin_exit(None)
                return
            self._reply(fut, {"ok": 1, "pid": os.getpid()}, [])
        except BaseException as e:  # noqa: BLE001
            error = e
            body, out = self._error_reply(dict(spec, nr=1), e, f"{name}.__init__")
            body["ok"] = 0
            if not spec.get("ne"):
                # The reply ends this process soon: its creation event goes out first.
                self.call_events.end(spec["t"], f"{name}.__init__", started, error, "ACTOR_CREATION_TASK")
                try:
                    self.core.call(self.core.task_events.send(), timeout=2)
                except Exception:  # noqa: BLE001 - best effort: the control store may be gone
                    pass
            self._reply(fut, body, out)
            self._mark_exiting()
        finally:
            task_context.CURRENT.reset(current)
            if not spec.get("ne") and error is None:
                self.call_events.end(spec["t"], f"{name}.__init__", started, error, "ACTOR_CREATION_TASK")

    def _pool_for(self, group: str | None) -> concurrent.futures.ThreadPoolExecutor | None:
        if group is None or group == DEFAULT_GROUP:
            return self.actor_pool
        return self.group_pools.get(group)

    # --- calls -----------------------------------------------------------------------
    def _run_call(self, spec: dict, bufs: list, fut: Replier) -> None:
        """A call on a thread of the actor's pool (``max_concurrency > 1``, concurrency groups)."""
        self.pool_calls.append(None)  # (list append and pop: atomic, no lock per call)
        try:
            self._run_call_here(spec, bufs, fut, False)
        finally:
            self.pool_calls.pop()
            if self.exiting:  # the exit waits for the calls still running (see _begin_exit)
                with self.pool_idle:
                    self.pool_idle.notify_all()

    def _run_call_here(self, spec: dict, bufs: list, fut: Replier, inline: bool = True) -> None:
        """A call on this thread: the exec loop's own (``inline``: a sync actor's,
        or ``__ray_ready__``) or one of the actor's pool."""
        if self.exiting:  # queued behind an exit: fails (follows Ray)
            fut.send(*self._exited_reply(spec))
            return
        ctx = self.core.ctx
        tid = spec["t"]
        name = f"{self.actor_name}.{spec['m']}"
        ctx.task_id, ctx.name = tid, self.actor_name
        if inline:
            self.sync_busy = True
        current = task_context.CURRENT.set(spec)
        # Task events: a plain call's (name, start) in ``running`` is reported RUNNING if it
        # still runs at a flush; its end goes in the buffer's ``calls`` (no call per event).
        buf = None if spec.get("ne") else self.call_events.sync_buf
        error: BaseException | None = None
        gen = spec["nr"] < 0
        if buf is None:
            started = 0.0
        elif gen:
            started = buf.call_started(tid, name)
        else:
            started = time.time()
        try:
            try:
                # A cancel interrupts a generator method's thread (from here to _finished),
                # never a plain method's: it runs to its end, its result dropped (follows Ray).
                self.running[tid] = threading.get_ident() if gen else (name, started) if buf is not None else 0
                if buf is not None and not buf.armed:  # (after the call is in ``running``: a
                    buf.arm_soon()  # flush that ran just before this saw it there, or arms anew)
                if self.cancelled and tid in self.cancelled:  # cancelled while it waited its turn
                    raise exc.TaskCancelledError(tid.hex())
                if self.actor is None:
                    raise exc.ActorDiedError(error_msg="the actor's constructor failed")
                args, kwargs = self._decode_args(spec, bufs, 0)
                result = self._method(spec)(*args, **kwargs)
                if gen:  # items go out as they are yielded
                    body, out = streams.stream(self, fut, spec, result, name), []
                elif self.cancelled and tid in self.cancelled:
                    raise exc.TaskCancelledError(tid.hex())
                else:
                    body, out = self._encode_returns(spec, result, name, fut.conn)
                args = kwargs = result = None  # (refs in them that nothing else holds are not borrowed)
            finally:
                if gen:
                    self._finished(tid)  # no interrupt lands after this (see Executor._run_task)
                else:  # (never interrupted)
                    self.running.pop(tid, None)
        except ActorExit:
            self.exit_requested = True
            self.exit_thread = threading.get_ident()
        except KeyboardInterrupt:
            self.core.arg_scope.on = False  # (a cancel may land while arguments are decoded)
            error = exc.TaskCancelledError(tid.hex())
            body, out = self._error_reply(spec, error, name)
        except BaseException as e:  # noqa: BLE001
            error = e
            body, out = self._error_reply(spec, e, name)
        finally:
            task_context.CURRENT.reset(current)
            if self.cancelled:
                self.cancelled.discard(tid)
            ctx.task_id = None
            if inline:
                self.sync_busy = False
        if not (self.exit_requested and self.exit_thread == threading.get_ident()):
            self._reply(fut, body, out)
            if buf is not None:  # (after the reply: off the caller's path)
                if error is None and not gen:  # (call_ended, inlined: once per call)
                    buf.calls.append((tid, name, started, time.time(), buf.actor_id))
                    if not buf.armed:
                        buf.arm_soon()
                else:
                    buf.call_ended(tid, name, started, error)
            if self.exit_requested and not self.exit_started:
                self.exec_loop.call_soon_threadsafe(self._exit_if_idle)
            return
        # exit_actor() in this call (even if the method caught what it raised): the caller gets RayActorError.
        self.exit_thread = 0
        self._mark_exiting()
        self.core.call(self._notify_exit(EXITED))
        self._reply(fut, *self._exited_reply(spec))
        if buf is not None:  # (its caller got ActorDiedError: it failed, and runs no more)
            buf.call_ended(tid, name, started, exc.ActorDiedError(error_msg=EXITED))
        if inline:
            self._begin_exit(None)
        else:
            self.exec_loop.call_soon_threadsafe(self._begin_exit, None)

    async def _async_call(self, spec: dict, bufs: list, fut: Replier) -> None:
        """A call of an async actor: a task on the exec loop (see ``on_actor_call``,
        which put it in ``running``; it takes itself out when it ends)."""
        try:
            m = spec["m"]
            name = f"{self.actor_name}.{m}"
            if m == "__ray_ready__":
                fut.send(*self._encode_returns(spec, True, name))
                return
            if self.cancelled and spec["t"] in self.cancelled:  # cancelled before the loop read it
                error = exc.TaskCancelledError(spec["t"].hex())
                fut.send(*self._error_reply(spec, error, name))
                if not spec.get("ne"):
                    self.call_events.end(spec["t"], name, task_events.now(), error)
                return
            group = spec.get("cg")
            sem = self.actor_sem if group is None or group == DEFAULT_GROUP else self.group_sems.get(group)
            if sem is None:
                fut.send(*self._error_reply(spec, ValueError(f"the actor has no concurrency group {group!r}"), name))
                return
            task_context.CURRENT.set(spec)  # this coroutine's own context
            events = None if spec.get("ne") else self.call_events
            error: BaseException | None = None
            if sem.free > 0:  # (no caller waits while a slot is free: see CallSlots)
                sem.free -= 1
            else:
                try:
                    await sem.wait()
                except asyncio.CancelledError:  # cancelled while it waited for a slot
                    error = exc.TaskCancelledError(spec["t"].hex())
                    fut.send(*self._error_reply(spec, error, name))
                    if events is not None:
                        events.end(spec["t"], name, task_events.now(), error)
                    return
            try:
                if self.exiting:
                    fut.send(*self._exited_reply(spec))
                    return
                started = events.start(spec["t"], name) if events is not None else 0.0
                try:
                    args, kwargs = self._decode_args(spec, bufs, 0)
                    result = self._method(spec)(*args, **kwargs)
                    if spec["nr"] < 0:  # a generator method: items go out as they are yielded
                        body, out = await streams.stream_async(self, fut, spec, result, name), []
                    else:
                        if inspect.isawaitable(result):
                            result = await result
                        elif inspect.isasyncgen(result) and spec["nr"] > 1:  # a fixed num_returns over it
                            result = await streams.take_async(result, spec["nr"], name)
                        body, out = self._encode_returns(spec, result, name, fut.conn)
                    args = kwargs = result = None  # (refs in them that nothing else holds are not borrowed)
                except (ActorExit, exc.AsyncioActorExit):
                    self.exit_requested = True
                    self._mark_exiting()  # (before the slot is given back: no waiting call starts)
                except asyncio.CancelledError:
                    error = exc.TaskCancelledError(spec["t"].hex())
                    body, out = self._error_reply(spec, error, name)
                except BaseException as e:  # noqa: BLE001
                    error = e
                    body, out = self._error_reply(spec, e, name)
            finally:
                sem.release()
            core = self.core
            if core.deferred_borrows:  # arguments still referenced: borrowed from now on
                core.announce_deferred_borrows()
            if core.borrows_inflight:
                await _despite_cancel(asyncio.run_coroutine_threadsafe(core.flush_borrows(), core.loop))
            if not self.exit_requested:
                fut.send(body, out)
                if events is not None:  # (after the reply: off the caller's path)
                    events.end(spec["t"], name, started, error)
                return
            self._mark_exiting()
            await _despite_cancel(asyncio.run_coroutine_threadsafe(self._notify_exit(EXITED), self.core.loop))
            fut.send(*self._exited_reply(spec))
            self.exec_loop.call_soon(self._begin_exit, None)
        finally:
            self.running.pop(spec["t"], None)
            if self.cancelled:
                self.cancelled.discard(spec["t"])


async def _despite_cancel(cf: concurrent.futures.Future) -> None:
    """Waits for ``cf`` (work on the I/O thread) even if the call awaiting it is
    cancelled meanwhile: the call has ended, and its reply must still go out."""
    fut = asyncio.wrap_future(cf)
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue
    fut.result()


class CallSlots:
    """How many more calls of one group may start (an async actor's
    ``max_concurrency``, or a concurrency group's size); calls past the limit
    wait for a slot, first come first served.

    A caller takes a free slot itself (``free -= 1``: no call, no await, on
    the path of every call) and waits (``wait``) only when none is free; a
    slot given back goes straight to the first caller waiting, so ``free`` is
    above 0 only while nobody waits.  Exec loop only.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    async def wait(self) -> None:
        """Waits until ``release`` hands this caller a slot."""
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot just as it was cancelled: pass it on
                self.release()
            raise  # (a cancelled waiter left in ``waiters`` is skipped by release)

    def release(self) -> None:
        """Gives a slot back: to the first caller still waiting, else to ``free``."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class _Ended:
    """Stands in for an actor whose constructor called exit_actor()."""


class Replier:
    """Answers one request straight from the thread that did the work."""

    __slots__ = ("conn", "rid")

    def __init__(self, conn: wire.Connection) -> None:
        self.conn = conn
        self.rid = conn.current_rid

    def send(self, body: dict, bufs: list) -> None:
        self.conn.reply(self.rid, body, bufs)
