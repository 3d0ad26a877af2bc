"""A compiled graph inside an actor: set-up, the execution loop, teardown.

The driver runs these functions in each actor with ``__ray_call__`` (on the
actor's main thread, like any call), in three steps:

1. ``prepare``: listen for the graph's connections (an abstract Unix socket,
   and TCP for readers on other nodes); refused if the actor is in a graph.
2. ``connect``: dial the readers of the edges this actor writes, accept the
   connections of the edges it reads (and of the driver, for the graph's
   outputs), map the shared-memory segments, then start the execution loop
   on a background thread.  Normal method calls keep running on the main
   thread meanwhile.
3. ``teardown``: wake the loop (shut its sockets), join it, free everything.

The loop runs the actor's tasks in order, once per execution: read each
input (the first use of an edge in an execution reads it), call the method,
write the result.  A method's exception travels on as the result (the graph
stays usable); an input from a process that went away ends the loop, after
telling the readers downstream which actor died.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import socket
import threading
import time
import traceback
from typing import Any

import cloudpickle

from skate import exceptions as exc
from skate._private import runtime, serialization
from skate._private.cgraph import channel as ch
from skate._private.cgraph import secure
from skate._private.cgraph.plan import DRIVER, HELLO, ActorPlan, fill
from skate.dag.dag_input import pick

#: The graph each actor instance of this process takes part in (one per actor).
_GRAPHS: dict[int, ActorGraph] = {}
JOIN_TIMEOUT_S = 10.0


class ActorGraph:
    """One actor's share of one compiled graph."""

    def __init__(self, gid: bytes) -> None:
        self.gid = gid
        self.listeners: list[socket.socket] = []
        self.readers: dict[int, ch.Reader] = {}
        self.writers: dict[int, ch.Writer] = {}
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.group: Any = None  # the process group of transport="nccl" edges

    def sockets(self) -> list:
        out = [r.sock for r in self.readers.values()]
        for w in self.writers.values():
            out.extend(w.socks)
        return out

    def close(self) -> None:
        for s in self.listeners:
            s.close()
        self.listeners = []
        for r in self.readers.values():
            r.close()
        for w in self.writers.values():
            w.close()
        self.readers, self.writers = {}, {}
        self.group = None


def listen_address(gid: bytes) -> str:
    """The abstract Unix socket name an actor of graph ``gid`` listens on (nothing on disk)."""
    return f"\0skate-cg-{gid.hex()}-{os.getpid()}"


def prepare(actor: Any, gid: bytes) -> dict:
    """Step 1 (in the actor): listen for the graph's connections.

    Returns:
        ``{"uds": ..., "tcp": (host, port), "node_id": ..., "pid": ...}``.

    Raises:
        ValueError: when the actor already takes part in a compiled graph.
    """
    old = _GRAPHS.get(id(actor))
    if old is not None:
        if old.thread is not None and old.thread.is_alive() or old.thread is None:
            raise ValueError(
                f"The actor {type(actor).__name__} already takes part in a compiled graph; an actor takes part "
                "in one compiled graph at a time: call teardown() on the other graph first."
            )
        old.close()
        del _GRAPHS[id(actor)]
    ag = ActorGraph(gid)
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds.bind(listen_address(gid))
    uds.listen(128)
    # Readers on other nodes reach this process at its node's address (the
    # one its node daemon advertises and binds, ``--node-ip-address``).
    core = runtime.current()
    ip = core.node_ip
    tcp = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind((ip, 0))
    tcp.listen(128)
    ag.listeners = [uds, tcp]
    _GRAPHS[id(actor)] = ag
    return {"uds": listen_address(gid), "tcp": tcp.getsockname()[:2], "node_id": core.node_id, "pid": os.getpid()}


def dial(address: dict, same_node: bool, gid: bytes, token: bytes, reader: int, edge: int, deadline: float) -> Any:
    """Connects to a process's graph listener as ``reader`` of ``edge``; returns the blocking socket.

    On the node: the abstract Unix socket, then HELLO (the token, in the
    clear: nothing leaves the host).  Between nodes: TCP to the process's
    node address, the handshake and records of ``secure`` (a ``SealedSocket``).

    Raises:
        OSError: when the listener cannot be reached, or fails to prove it is the graph's.
    """
    if same_node:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        s.connect(address["uds"])
        s.sendall(HELLO.pack(token, reader, edge))
        return s
    s = socket.socket(socket.AF_INET6 if ":" in address["tcp"][0] else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        s.connect(tuple(address["tcp"]))
        return secure.client_hello(s, gid, token, reader, edge, deadline)
    except BaseException:
        s.close()
        raise


def accept(listeners: list, gid: bytes, token: bytes, expected: set, deadline: float) -> dict:
    """Accepts one connection per ``(reader, edge)`` in ``expected``; returns them by that key.

    A connection that does not prove it holds the graph's token (the token
    itself on the node, the handshake between nodes) is closed and ignored.

    Raises:
        TimeoutError: when not all came before ``deadline``.
    """
    got: dict = {}
    poller = select.poll()
    for s in listeners:
        poller.register(s.fileno(), select.POLLIN)
    by_fd = {s.fileno(): s for s in listeners}
    while len(got) < len(expected):
        left = deadline - time.monotonic()
        if left <= 0:
            for conn in got.values():
                conn.close()
            raise TimeoutError(f"compiled graph set-up: {len(expected) - len(got)} connection(s) never came")
        for fd, _ in poller.poll(int(left * 1000) + 1):
            conn, _ = by_fd[fd].accept()
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                if conn.family == socket.AF_UNIX:
                    end, hello = conn, secure.recv_exact(conn, HELLO.size)
                else:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    end, hello = secure.server_hello(conn, gid, token, deadline)
            except (OSError, ValueError):  # closed, too slow, or no proof of the token (AuthError)
                conn.close()
                continue
            tok, reader, edge = HELLO.unpack(hello)
            if not secure.same_token(tok, token) or (reader, edge) not in expected or (reader, edge) in got:
                conn.close()  # not one of this graph's processes
                continue
            got[(reader, edge)] = end
    return got


def connect(actor: Any, gid: bytes, plan: ActorPlan) -> None:
    """Step 2 (in the actor): wire the channels up and start the execution loop.

    Raises:
        RuntimeError: when ``prepare`` was not run for this graph.
        TimeoutError: when the other processes did not connect in time.
    """
    ag = _GRAPHS.get(id(actor))
    if ag is None or ag.gid != gid:
        raise RuntimeError("compiled graph set-up: this actor was not prepared for the graph")
    me = plan.index
    deadline = time.monotonic() + plan.connect_timeout
    out_socks: dict[int, list] = {}
    expected: set = set()
    dials: list = []  # (edge id, index among its readers, reader)
    for e in plan.edges.values():
        if e.writer == me:
            out_socks[e.edge_id] = [None] * len(e.readers)
            for i, r in enumerate(e.readers):
                if r == DRIVER:
                    expected.add((DRIVER, e.edge_id))  # the driver dials in
                else:
                    dials.append((e.edge_id, i, r))
        elif me in e.readers:
            expected.add((me, e.edge_id))
    conns = _dial_and_accept(ag, gid, plan, dials, out_socks, expected, deadline)
    for s in ag.listeners:
        s.close()
    ag.listeners = []
    if plan.p2p is not None:
        from skate._private.cgraph import tensors

        ag.group = tensors.make_group(plan.p2p)
    ranks = plan.p2p["ranks"] if plan.p2p else {}
    backend = plan.p2p["backend"] if plan.p2p else None
    for e in plan.edges.values():
        if e.writer == me:
            socks = out_socks[e.edge_id]
            for i, r in enumerate(e.readers):
                if r == DRIVER:
                    socks[i] = conns.pop((DRIVER, e.edge_id))
            for s in socks:
                s.setblocking(False)
            shm = ch.shm_map(e.shm, True) if e.shm and any(e.local) else None
            p2p = (ag.group, [ranks[r] for r in e.readers], e.edge_id, backend) if e.transport == "nccl" else None
            ag.writers[e.edge_id] = ch.Writer(socks, e.local, shm, e.slot_size, e.nslots, e.tensor_device, p2p)
        else:
            s = conns[(me, e.edge_id)]
            s.setblocking(False)
            local = e.local[e.readers.index(me)]
            shm = ch.shm_map(e.shm, False) if e.shm and local else None
            r = ag.readers[e.edge_id] = ch.Reader(s, shm, e.slot_size, copy=False)
            if e.transport == "nccl":
                r.p2p = (ag.group, ranks[e.writer], e.edge_id, backend, e.tensor_device)
    # Every blocking write, and every blocking read while there are other
    # inbound channels, keeps those read (see ``channel.Inbound``).
    pump = pump_of(list(ag.readers.values()))
    for end in [*ag.writers.values(), *(ag.readers.values() if len(ag.readers) > 1 else ())]:
        end.pump = pump
    ag.thread = threading.Thread(target=_run, args=(ag, actor, plan), name="skate-cgraph-loop", daemon=True)
    ag.thread.start()


def _dial_and_accept(ag: ActorGraph, gid: bytes, plan: ActorPlan, dials: list, out_socks: dict,
                     expected: set, deadline: float) -> dict:
    """Dials this actor's readers (into ``out_socks``) while it accepts its own connections.

    Between nodes a dial waits for the listener's side of the handshake,
    and that listener may be dialing this actor at the same moment: the
    dials run on a thread of their own, so neither waits on the other.
    On failure every socket made is closed.

    Raises:
        TimeoutError: when the connections did not all come before ``deadline``.
        OSError: when a reader could not be reached or failed the handshake.
    """
    my_node = plan.addresses[plan.index]["node_id"]
    errors: list = []

    def dial_all() -> None:
        try:
            for eid, i, r in dials:
                same = plan.addresses[r]["node_id"] == my_node
                out_socks[eid][i] = dial(plan.addresses[r], same, gid, plan.token, r, eid, deadline)
        except BaseException as e:  # noqa: BLE001 - raised on the caller's thread
            errors.append(e)

    t = threading.Thread(target=dial_all, name="skate-cgraph-dial", daemon=True)
    t.start()
    conns: dict = {}
    try:
        conns = accept(ag.listeners, gid, plan.token, expected, deadline)
    finally:
        t.join(max(deadline - time.monotonic(), 0.0) + 5.0)
        if errors or t.is_alive() or len(conns) < len(expected):
            for s in [*(x for socks in out_socks.values() for x in socks), *conns.values()]:
                if s is not None:
                    s.close()
    if errors:
        raise errors[0]
    if t.is_alive():
        raise TimeoutError("compiled graph set-up: dialing this actor's readers did not finish in time")
    return conns


def pump_of(readers: list) -> ch.Inbound | None:
    """What this process keeps reading while one of its channels waits: every inbound channel."""
    return ch.Inbound(readers) if readers else None


def teardown(actor: Any, gid: bytes) -> bool:
    """Step 3 (in the actor): stop the loop and free the graph's channels.

    Returns:
        True when the loop ended (False: a method is still running after
        ``JOIN_TIMEOUT_S``; its thread ends when the method returns).
    """
    ag = _GRAPHS.get(id(actor))
    if ag is None or ag.gid != gid:
        return True
    ag.stopping = True
    for s in ag.sockets():
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if ag.thread is not None:
            ag.thread.join(JOIN_TIMEOUT_S)
        return _finish(actor, ag)
    # An async actor: this is its event loop, which a method the loop thread
    # runs may still need; wait without blocking it.
    return _finish_async(actor, ag)  # type: ignore[return-value]


async def _finish_async(actor: Any, ag: ActorGraph) -> bool:
    end = time.monotonic() + JOIN_TIMEOUT_S
    while ag.thread is not None and ag.thread.is_alive() and time.monotonic() < end:
        await asyncio.sleep(0.002)
    return _finish(actor, ag)


def _finish(actor: Any, ag: ActorGraph) -> bool:
    if ag.thread is not None and ag.thread.is_alive():
        return False
    ag.close()
    _GRAPHS.pop(id(actor), None)
    return True


def task_error(e: BaseException, name: str, actor_name: str) -> ch.ErrorValue:
    """A method's exception as the value that travels on (a RayTaskError, like a task's)."""
    if isinstance(e, exc.RayTaskError):  # from a task the method waited on: keeps its origin
        return ch.ErrorValue(e)
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    cause: BaseException | None = e
    try:
        cloudpickle.dumps(cause)
    except Exception:  # noqa: BLE001
        cause = None
    return ch.ErrorValue(exc.RayTaskError(name, tb, cause, actor_repr=actor_name))


def _run(ag: ActorGraph, actor: Any, plan: ActorPlan) -> None:
    """The execution loop (background thread): each op once per execution, in order."""
    actor_name = type(actor).__name__
    core = runtime.current_or_none()
    actor_loop = getattr(getattr(core, "executor", None), "actor_loop", None)
    ops = [(op, getattr(actor, op.method), f"{actor_name}.{op.method}") for op in plan.ops]
    readers, writers = ag.readers, ag.writers
    edge_writer = {e.edge_id: e.writer for e in plan.edges.values()}
    ErrorValue = ch.ErrorValue
    try:
        if len(ops) == 1:
            op, fn, name = ops[0]
            (kind, ref), acc = op.deps[0] if len(op.deps) == 1 else ((None, None), None)
            if kind == "edge" and acc is None and op.simple and op.out_edge is not None:
                # One method reading one channel: the loop of a pipeline stage or an echo.
                read, write = readers[ref].read, writers[op.out_edge].write
                is_async = inspect.iscoroutinefunction(fn)
                while True:
                    v = read()
                    if type(v) is not ErrorValue:
                        try:
                            v = _await(fn(v), actor_loop) if is_async else fn(v)
                        except BaseException as e:  # noqa: BLE001
                            v = task_error(e, name, actor_name)
                    try:
                        write(v)
                    except serialization.SerializationError as e:
                        write(task_error(e, name, actor_name))
        while True:
            got: dict = {}
            local: dict = {}
            for op, fn, name in ops:
                vals = []
                err = None
                for (kind, ref), acc in op.deps:
                    if kind == "edge":
                        v = got.get(ref, got)
                        if v is got:
                            v = got[ref] = readers[ref].read()
                    else:
                        v = local[ref]
                    if type(v) is ErrorValue:
                        err = err or v
                    elif acc is not None:
                        try:
                            v = pick(v, *acc)
                        except Exception as e:  # noqa: BLE001
                            err = err or task_error(e, name, actor_name)
                    vals.append(v)
                if err is None:
                    try:
                        result = fn(*vals) if op.simple else fn(*fill(op.args, vals), **fill(op.kwargs, vals))
                        if inspect.isawaitable(result):
                            result = _await(result, actor_loop)
                    except BaseException as e:  # noqa: BLE001
                        result = task_error(e, name, actor_name)
                else:
                    result = err
                if op.out_edge is not None:
                    try:
                        writers[op.out_edge].write(result)
                    except serialization.SerializationError as e:
                        writers[op.out_edge].write(task_error(e, name, actor_name))
                if op.keep_local:
                    local[op.node] = result
    except ch.ChannelClosed:
        if not ag.stopping:
            _tell_downstream(ag, plan, edge_writer)
    except Exception as e:  # noqa: BLE001 - a fault of the loop itself: a system error downstream
        if not ag.stopping:
            err = exc.RayChannelError(f"The compiled graph's loop in the actor {actor_name} failed: {e!r}")
            for w in ag.writers.values():
                try:
                    w.write(ch.ErrorValue(err), time.monotonic() + 1.0)
                except Exception:  # noqa: BLE001
                    pass


def _tell_downstream(ag: ActorGraph, plan: ActorPlan, edge_writer: dict) -> None:
    """An input's process went away: tell every reader downstream which one, then stop."""
    dead = None
    for edge, r in ag.readers.items():
        try:
            r.try_read()
        except ch.ChannelClosed:
            dead = edge_writer[edge]
            break
        except Exception:  # noqa: BLE001
            continue
    if dead is None or dead == DRIVER:
        return  # the driver left: the graph is being torn down
    err = exc.ActorDiedError(
        error_msg=f"The actor {plan.names.get(dead, '?')} died while taking part in a compiled graph."
    )
    for w in ag.writers.values():
        try:
            w.write(ch.ErrorValue(err), time.monotonic() + 1.0)
        except Exception:  # noqa: BLE001
            pass


def _await(aw: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    """Runs an async method's coroutine on the actor's event loop and waits for it."""
    if loop is None:
        return asyncio.run(aw)
    return asyncio.run_coroutine_threadsafe(aw, loop).result()
