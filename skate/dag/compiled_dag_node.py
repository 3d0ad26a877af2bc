"""``CompiledDAG``: a DAG of actor method calls set up once, then run many times cheaply.

Compiling (driver side)::

    DAG nodes --plan--> per actor: its ops, in order; per edge: writer, readers, segment
       |  prepare   (each actor listens, via __ray_call__)
       |  connect   (each actor dials/accepts its channels, starts its loop thread;
       |             the driver dials the input's readers and the outputs' writers)
       v
    execute(x): one frame per input reader          get(ref): read each output channel

Values never go through the control store, the node daemon or the normal
call path: the driver writes the input to each reading actor's socket, each
actor's loop runs its methods and writes to the next, the driver reads the
outputs.  See ``skate._private.cgraph.channel`` for the wire and shared
memory, ``skate._private.cgraph.worker`` for the actor side.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
import uuid
import warnings
from typing import Any

from skate import exceptions as exc
from skate._private import runtime
from skate._private.cgraph import channel as ch
from skate._private.cgraph import worker
from skate._private.cgraph.plan import DRIVER, ActorPlan
from skate._private.config import CONFIG
from skate._private.core_worker.actors import DEAD
from skate.dag.compiled_dag_ref import CompiledDAGFuture, CompiledDAGRef
from skate.dag.context import DAGContext
from skate.dag.dag_input import input_value
from skate.dag.graph_plan import INPUT, analyze, plan_edges, plan_ops

SETUP_TIMEOUT_S = 30.0
_TAKEN = object()


def build_compiled_dag(root: Any, **options: Any) -> CompiledDAG:
    """Compiles the graph ending at ``root`` (``DAGNode.experimental_compile``)."""
    return CompiledDAG(root, **options)


class CompiledDAG:
    """A compiled graph (follows Ray): ``execute``/``execute_async``, then ``get``; ``teardown`` at the end."""

    def __init__(
        self,
        root: Any,
        submit_timeout: float | None = None,
        buffer_size_bytes: int | None = None,
        enable_asyncio: bool = False,
        max_inflight_executions: int | None = None,
        max_buffered_results: int | None = None,
        overlap_gpu_communication: bool | None = None,
        default_communicator: Any = "create",
    ) -> None:
        if overlap_gpu_communication:
            raise NotImplementedError("_overlap_gpu_communication is not supported by skate (no GPU communication)")
        if default_communicator not in ("create", None):
            raise NotImplementedError("_default_communicator is not supported by skate (no GPU communication)")
        ctx = DAGContext.get_current()
        self._id = uuid.uuid4().hex
        self._submit_timeout = float(ctx.resolve("submit_timeout", submit_timeout))
        self._get_timeout = float(ctx.resolve("get_timeout", None))
        self._buffer_size = int(ctx.resolve("buffer_size_bytes", buffer_size_bytes))
        self._max_inflight = int(ctx.resolve("max_inflight_executions", max_inflight_executions))
        self._max_buffered = int(ctx.resolve("max_buffered_results", max_buffered_results))
        if self._buffer_size <= 0 or self._max_inflight <= 0 or self._max_buffered <= 0:
            raise ValueError("_buffer_size_bytes, _max_inflight_executions and _max_buffered_results must be positive")
        self._enable_asyncio = enable_asyncio
        self._loop: asyncio.AbstractEventLoop | None = None
        self._torn_down = False
        self._broken: BaseException | None = None
        self._input: ch.Writer | None = None
        self._readers: dict[int, ch.Reader] = {}
        self._queues: dict[int, collections.deque] = {}
        self._outputs: list[int] = []
        self._multi = root._cg_kind == "multi"
        self._actors: list[Any] = []
        self._names: dict[int, str] = {}
        self._next_exec = 0
        self._next_read = 0
        self._results: dict[int, list] = {}
        self._discarded: dict[int, set] = {}
        self._afuts: dict[int, list] = {}
        self._gid = os.urandom(16)  # names the graph (visible in socket names)
        self._token = os.urandom(16)  # proves a connection comes from the graph (secret)
        self._shm_names: list[str] = []
        self._prepared: list[Any] = []
        self._dead: set[int] = set()  # actors known to have died (no teardown call for them)
        self._store: Any = None  # the process group's rendezvous (transport="nccl")
        # One thread at a time writes the input or reads the outputs (frames must not interleave).
        self._lock = threading.RLock()
        try:
            self._compile(root)
        except BaseException:
            self._teardown(wait=True)
            raise

    def get_id(self) -> str:
        """This compiled graph's id (hex)."""
        return self._id

    def __repr__(self) -> str:
        return f"CompiledDAG({self._id})"

    # --- compiling ----------------------------------------------------------------------
    def _compile(self, root: Any) -> None:
        shape = analyze(root)
        self._actors = shape.actors
        self._names = {i: repr(h) for i, h in enumerate(shape.actors)}
        core = runtime.current()
        # 1. every actor listens (and refuses if it is in another graph)
        self._prepared = list(self._actors)
        infos = _get_all([h.__ray_call__.remote(worker.prepare, self._gid) for h in self._actors])
        addresses = dict(enumerate(infos))
        node_of = {i: a["node_id"] for i, a in addresses.items()}
        # A driver on a host with no node of its own shares no node with anyone.
        node_of[DRIVER] = b"off-node" if getattr(core, "off_node", False) else core.node_id
        # 2. channels, with a shared-memory segment where a reader shares the writer's node
        prefix = f"{CONFIG.shm_prefix}-cg{self._gid.hex()[:16]}-"
        edges = plan_edges(shape, node_of, lambda eid: prefix + str(eid), self._buffer_size, self._max_inflight)
        for e in edges.values():
            if e.shm:
                ch.shm_create(e.shm, e.slot_size * e.nslots)
                self._shm_names.append(e.shm)
        ops_of = plan_ops(shape, edges)
        p2p = self._p2p_group(shape.p2p_actors)
        # 3. every actor wires up and starts its loop; the driver dials its own channels
        by_id = {e.edge_id: e for e in edges.values()}
        plans = []
        for a in range(len(self._actors)):
            mine = {e.edge_id: e for e in edges.values() if e.writer == a or a in e.readers}
            plans.append(ActorPlan(self._gid, self._token, a, ops_of[a], mine, addresses, self._names, SETUP_TIMEOUT_S,
                                   dict(p2p, rank=p2p["ranks"][a]) if p2p and a in p2p["ranks"] else None))
        refs = [h.__ray_call__.remote(worker.connect, self._gid, plans[a]) for a, h in enumerate(self._actors)]
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        inp = edges[INPUT]
        socks = []
        for r in inp.readers:
            socks.append(self._dial(addresses[r], node_of[r] == node_of[DRIVER], r, inp.edge_id, deadline))
        shm = ch.shm_map(inp.shm, True) if inp.shm else None
        self._input = ch.Writer(socks, inp.local, shm, inp.slot_size, inp.nslots, inp.tensor_device)
        for p in shape.outputs:
            e = edges[p]
            self._outputs.append(e.edge_id)
            if e.edge_id in self._readers:
                continue
            local = e.local[e.readers.index(DRIVER)]
            s = self._dial(addresses[e.writer], local, DRIVER, e.edge_id, deadline)
            self._readers[e.edge_id] = ch.Reader(s, ch.shm_map(e.shm, False) if e.shm and local else None, e.slot_size, copy=True)
            self._queues[e.edge_id] = collections.deque()
        pump = worker.pump_of(list(self._readers.values()))
        self._input.pump = pump
        if len(self._readers) > 1:
            for r in self._readers.values():
                r.pump = pump  # waiting for one output keeps the others read
        self._writer_of = {eid: by_id[eid].writer for eid in self._readers}
        # One output channel, read synchronously: get() reads it straight (the common case).
        self._only = next(iter(self._readers.values())) if len(self._readers) == 1 else None
        _get_all(refs)
        for name in self._shm_names:  # everyone mapped them: nothing can be left behind now
            ch.shm_unlink(name)
        self._shm_names = []
        if self._enable_asyncio:
            self._loop = _event_loop()
            for r in self._readers.values():
                self._loop.add_reader(r.fileno(), self._on_readable)

    def _p2p_group(self, actors: list[int]) -> dict | None:
        """Hosts the rendezvous of the actors' process group (``transport="nccl"``), if any."""
        if not actors:
            return None
        import datetime

        import torch.distributed as dist

        backend = DAGContext.get_current().resolve("p2p_backend")
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"RAY_CGRAPH_p2p_backend must be 'nccl' or 'gloo', not {backend!r}")
        timeout = datetime.timedelta(seconds=SETUP_TIMEOUT_S)
        host = runtime.current().node_ip  # the actors may be on other nodes
        self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timeout)
        return {
            "host": host, "port": self._store.port, "prefix": f"cg{self._gid.hex()}/", "world": len(actors),
            "backend": backend, "timeout": SETUP_TIMEOUT_S, "ranks": {a: i for i, a in enumerate(actors)},
        }  # fmt: skip

    def _dial(self, address: dict, same_node: bool, reader: int, edge_id: int, deadline: float) -> Any:
        s = worker.dial(address, same_node, self._gid, self._token, reader, edge_id, deadline)
        s.setblocking(False)
        return s

    # --- executing ----------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise exc.RayChannelError(f"The compiled graph is torn down after an error: {self._broken}")
        if self._torn_down:
            raise exc.RayChannelError("The compiled graph was torn down; compile the DAG again to run it.")

    def _submit(self, args: tuple, kwargs: dict) -> int:
        with self._lock:
            return self._submit_locked(args, kwargs)

    def _submit_locked(self, args: tuple, kwargs: dict) -> int:
        self._check_usable()
        if self._next_exec - self._next_read >= self._max_inflight:
            self._drain_discarded()
        if self._next_exec - self._next_read >= self._max_inflight:
            raise exc.RayCgraphCapacityExceeded(
                f"The compiled graph can't have more than {self._max_inflight} in-flight executions, and you "
                f"currently have {self._next_exec - self._next_read} in-flight executions. Retrieve an output "
                "using ray.get before submitting more requests or increase `_max_inflight_executions`."
            )
        t = self._submit_timeout
        deadline = None if t < 0 else time.monotonic() + t
        try:
            self._input.write(input_value(args, kwargs), deadline)
        except ch.ChannelClosed:
            pass  # an actor died: reading this execution's outputs says which
        except ch.ChannelTimeout as e:
            err = exc.RayChannelTimeoutError(
                f"execute() could not hand the input to the graph within {t} s (RAY_CGRAPH_submit_timeout)"
                + ("; the input was cut in the middle, so the graph is torn down" if e.partial else "")
            )
            if e.partial:
                self._fail(err)
            raise err from None
        index = self._next_exec
        self._next_exec = index + 1
        return index

    def execute(self, *args: Any, **kwargs: Any) -> CompiledDAGRef | list[CompiledDAGRef]:
        """Runs the graph once on ``args``/``kwargs``; returns its output ref(s) at once.

        Raises:
            ValueError: when the graph was compiled with ``enable_asyncio=True``.
            RayCgraphCapacityExceeded: with ``_max_inflight_executions`` executions not yet read.
            RayChannelTimeoutError: when the input could not be handed over in time.
            RayChannelError: after ``teardown()`` or a system error.
        """
        if self._enable_asyncio:
            raise ValueError("Use execute_async if enable_asyncio=True")
        index = self._submit(args, kwargs)
        if self._multi:
            return [CompiledDAGRef(self, index, i) for i in range(len(self._outputs))]
        return CompiledDAGRef(self, index, 0)

    async def execute_async(self, *args: Any, **kwargs: Any) -> CompiledDAGFuture | list[CompiledDAGFuture]:
        """Like ``execute`` for graphs compiled with ``enable_asyncio=True``: await it for the future(s).

        Raises:
            ValueError: when the graph was compiled without ``enable_asyncio``.
        """
        if not self._enable_asyncio:
            raise ValueError("Use execute if enable_asyncio=False")
        index = self._submit(args, kwargs)
        futs = [self._loop.create_future() for _ in self._outputs]
        self._afuts[index] = futs
        self._on_readable()  # the result may be here already
        if self._multi:
            return [CompiledDAGFuture(self, index, f, i) for i, f in enumerate(futs)]
        return CompiledDAGFuture(self, index, futs[0], 0)

    # --- reading results ----------------------------------------------------------------
    def _get(self, index: int, pos: int, timeout: float | None) -> Any:
        with self._lock:
            return self._get_locked(index, pos, timeout)

    def _get_locked(self, index: int, pos: int, timeout: float | None) -> Any:
        if self._enable_asyncio:
            raise ValueError("Use await on the future execute_async returned when enable_asyncio=True")
        if index >= self._next_read:
            self._check_usable()
            self._check_actors()
            t = self._get_timeout if timeout is None else timeout
            deadline = None if t < 0 else time.monotonic() + t
            only = self._only
            if index == self._next_read and only is not None and not self._multi and not self._queues_have_data():
                try:
                    value = only.read(deadline)
                except ch.ChannelTimeout:
                    raise exc.RayChannelTimeoutError(
                        f"The result of the compiled graph was not ready within {t} s (RAY_CGRAPH_get_timeout, or get(timeout=))"
                    ) from None
                except ch.ChannelClosed:
                    self._fail(self._channel_lost(self._writer_of[self._outputs[0]]))
                self._next_read = index + 1
                if type(value) is ch.ErrorValue and not isinstance(value.error, exc.RayTaskError):
                    self._fail(value.error)
                return self._unwrap(value)
            while index >= self._next_read:
                self._read_next(deadline, t)
        vals = self._results[index]
        value = vals[pos]
        vals[pos] = _TAKEN
        if all(v is _TAKEN for v in vals):
            del self._results[index]
        return self._unwrap(value)

    def _queues_have_data(self) -> bool:
        for q in self._queues.values():
            if q:
                return True
        return False

    def _unwrap(self, value: Any) -> Any:
        if type(value) is ch.ErrorValue:
            raise value.error
        return value

    def _read_next(self, deadline: float | None, t: float) -> None:
        if len(self._results) >= self._max_buffered:
            raise ValueError(
                f"Too many buffered results: the allowed max count for buffered results is {self._max_buffered}; "
                "call ray.get() on previous CompiledDAGRefs to free them up from buffer."
            )
        for eid, r in self._readers.items():
            q = self._queues[eid]
            if q:
                continue
            try:
                q.append(r.read(deadline))
            except ch.ChannelTimeout:
                raise exc.RayChannelTimeoutError(
                    f"The result of the compiled graph was not ready within {t} s (RAY_CGRAPH_get_timeout, or get(timeout=))"
                ) from None
            except ch.ChannelClosed:
                self._fail(self._channel_lost(self._writer_of[eid]))
        self._deliver()

    def _deliver(self) -> None:
        """Moves one execution's values from the channel queues to the results."""
        values = {eid: q.popleft() for eid, q in self._queues.items()}
        index = self._next_read
        self._next_read = index + 1
        for v in values.values():
            if type(v) is ch.ErrorValue and not isinstance(v.error, exc.RayTaskError):
                self._fail(v.error)  # a system error: the graph goes down
        vals = [values[eid] for eid in self._outputs]
        futs = self._afuts.pop(index, None)
        if futs is not None:
            for f, v in zip(futs, vals, strict=True):
                if not f.done():
                    f.set_result(v)
            return
        gone = self._discarded.pop(index, None)
        if gone:
            for pos in gone:
                vals[pos] = _TAKEN
            if all(v is _TAKEN for v in vals):
                return
        self._results[index] = vals

    def _discard(self, index: int, pos: int) -> None:
        """A ref was dropped without ``get``: its value is thrown away when read."""
        if self._torn_down:
            return
        with self._lock:
            self._discard_locked(index, pos)

    def _discard_locked(self, index: int, pos: int) -> None:
        vals = self._results.get(index)
        if vals is not None:
            vals[pos] = _TAKEN
            if all(v is _TAKEN for v in vals):
                del self._results[index]
        elif index >= self._next_read:
            self._discarded.setdefault(index, set()).add(pos)

    def _drain_discarded(self) -> None:
        """Reads executions whose refs were all dropped, to free their in-flight places."""
        n = len(self._outputs)
        while self._next_read < self._next_exec and len(self._discarded.get(self._next_read, ())) == n:
            t = self._get_timeout
            self._read_next(None if t < 0 else time.monotonic() + t, t)

    def _on_readable(self) -> None:
        """asyncio: reads whatever arrived and resolves the futures of finished executions."""
        if self._torn_down:
            return
        try:
            for eid, r in self._readers.items():
                q = self._queues[eid]
                while True:
                    v = r.try_read()
                    if v is ch.nothing():
                        break
                    q.append(v)
            while all(self._queues.values()):
                self._deliver()
        except ch.ChannelClosed:
            closed = next((eid for eid, r in self._readers.items() if _closed(r)), None)
            err = self._channel_lost(self._writer_of.get(closed, 0))
            self._fail(err, wait=False, quiet=True)
        except BaseException as e:  # noqa: BLE001
            self._fail(e, wait=False, quiet=True)

    # --- failures and teardown ----------------------------------------------------------
    def _check_actors(self) -> None:
        for i, h in enumerate(self._actors):
            if _is_dead(h):
                self._fail(self._died(i))

    def _channel_lost(self, actor: int) -> BaseException:
        """A channel from ``actor`` closed: ActorDiedError if it died, else RayChannelError."""
        h = self._actors[actor]
        if not _is_dead(h):
            try:
                runtime.current().get(h.__ray_ready__.remote(), 2.0)
            except exc.RayActorError:
                return self._died(actor)
            except Exception:  # noqa: BLE001 - alive but busy, or unreachable for another reason
                pass
            else:
                return exc.RayChannelError(
                    f"The channel from the actor {self._names.get(actor, '?')} closed while the actor is alive; "
                    "the compiled graph is torn down."
                )
        return self._died(actor)

    def _died(self, actor: int) -> BaseException:
        self._dead.add(actor)
        return exc.ActorDiedError(
            error_msg=f"The actor {self._names.get(actor, '?')} died while taking part in a compiled graph; "
            "the graph is torn down (the other actors stay alive)."
        )

    def _fail(self, err: BaseException, wait: bool = True, quiet: bool = False) -> None:
        """A system error: tear the graph down, fail what waits, raise ``err`` (unless ``quiet``)."""
        if self._broken is None:
            self._broken = err
        for futs in self._afuts.values():
            for f in futs:
                if not f.done():
                    f.set_exception(err)
        self._afuts.clear()
        self._teardown(wait=wait)
        if not quiet:
            raise err

    def teardown(self) -> None:
        """Stops the actors' loops and frees every channel; the actors can join new graphs after.

        Later ``execute``/``get`` calls raise ``RayChannelError``.
        """
        self._teardown(wait=True)

    def _teardown(self, wait: bool) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for f in [f for futs in self._afuts.values() for f in futs]:
            if not f.done():
                f.set_exception(exc.RayChannelError("The compiled graph was torn down."))
        self._afuts.clear()
        if self._loop is not None and not self._loop.is_closed():
            for r in self._readers.values():
                try:
                    self._loop.remove_reader(r.fileno())
                except (ValueError, OSError):
                    pass
        if self._input is not None:
            self._input.close()
        for r in self._readers.values():
            r.close()
        for name in self._shm_names:
            ch.shm_unlink(name)
        self._shm_names = []
        self._store = None
        if runtime.current_or_none() is None:
            return
        refs = []
        for i, h in enumerate(self._prepared):
            if i not in self._dead and not _is_dead(h):
                try:
                    refs.append(h.__ray_call__.remote(worker.teardown, self._gid))
                except Exception:  # noqa: BLE001
                    pass
        if wait and refs:
            try:
                _get_all(refs, return_exceptions=True)
            except Exception:  # noqa: BLE001
                pass

    def __del__(self) -> None:
        if not self.__dict__.get("_torn_down", True):
            try:
                self._teardown(wait=False)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _event_loop() -> asyncio.AbstractEventLoop:
    """The running event loop, else this thread's current one (made if none; like Ray's)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return asyncio.get_event_loop()
        except RuntimeError:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            return loop


def _closed(r: ch.Reader) -> bool:
    try:
        r.try_read()
    except ch.ChannelClosed:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


def _is_dead(handle: Any) -> bool:
    """True once this process knows the actor is dead (killed, or its death was reported)."""
    state = getattr(handle, "_state", None)
    return state is not None and state.state == DEAD


def _get_all(refs: list, return_exceptions: bool = False) -> list:
    core = runtime.current()
    if not return_exceptions:
        return core.get(refs, SETUP_TIMEOUT_S)
    out = []
    for r in refs:
        try:
            out.append(core.get(r, SETUP_TIMEOUT_S))
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out
