"""Generator tasks: items streamed from the worker as they are yielded (follows Ray).

::

    worker: for each item the generator yields -> serialize (inline, or a segment)
            -> notify("gen_item", {t, i, r}) to the caller on the task's connection
            [backpressure: wait for gen_ack while too many items are unconsumed]
            -> reply {"r": [] or [error], "g": items sent}
    owner:  gen_item -> a ready object ``object_id_for(task, i + 1)`` in the
            memory store; the ObjectRefGenerator hands out refs in order;
            the reply says how many there were (and an error as the last one)

``num_returns="streaming"`` (the default for generator functions) returns an
``ObjectRefGenerator``; ``num_returns="dynamic"`` returns one ObjectRef whose
value is a ``DynamicObjectRefGenerator`` of every item's ref; a fixed
``num_returns`` takes that many items from the generator.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

from skate import exceptions as exc
from skate._private import ids, serialization
from skate._private.core_worker.errors import error_payload
from skate._private.core_worker.memory_store import ERROR, INLINE, SHM

STREAMING, DYNAMIC = -1, -2


def num_returns_code(nr: Any) -> int:
    """``num_returns`` as the integer the task spec carries."""
    return STREAMING if nr == "streaming" else DYNAMIC if nr == "dynamic" else nr


# --- owner side ------------------------------------------------------------------------


class StreamState:
    """What the owner knows of one generator task's items."""

    def __init__(self, core: Any, rec: Any, first: int, backpressure: int | None) -> None:
        self.core = core
        self.rec = rec
        self.task_id = rec.spec["t"]
        self.first = first  # object index of item 0 (2 for dynamic: 1 is the generator itself)
        self.backpressure = backpressure
        self.cond = threading.Condition()
        self.received = 0  # items stored so far (they arrive in order)
        self.total: int | None = None  # known once the task ended
        self.handed = 0  # items handed out as refs
        self.end: tuple | None = None  # (rec, reply body, bufs): the reply, come before its last items
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def oid(self, i: int) -> bytes:
        return ids.object_id_for(self.task_id, i + self.first)

    def _changed(self) -> None:
        # (under self.cond)
        self.cond.notify_all()
        waiters, self.async_waiters = self.async_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def register(core: Any, rec: Any, dynamic: bool, backpressure: int | None) -> StreamState:
    st = StreamState(core, rec, 2 if dynamic else 1, backpressure)
    core.streams[st.task_id] = st
    return st


def _store_item(core: Any, oid: bytes, meta: list, bufs: list, keep: bool) -> None:
    store = core.store
    if meta[0] == SHM:
        store.put_ready(oid, SHM, None, [], meta[2], meta[3])
    else:
        store.put_ready(oid, meta[0], bufs[0], bufs[1 : meta[1]])
    if not keep:  # nobody will ever ask for it: let it go (frees a segment)
        from skate.object_ref import ObjectRef

        ObjectRef(oid, core.address)


def on_item(core: Any, body: dict, bufs: list, conn: Any = None) -> None:
    """A worker sent the next item of a generator task, on ``conn`` (I/O loop).

    Refs the item holds are taken over, then released at the worker's
    control endpoint (see ``_item``)."""
    st = core.streams.get(body["t"])
    i = body["i"]
    held = body.get("h")
    if st is None:  # the generator was dropped: free what still arrives
        if held:  # (nobody takes its refs over)
            _release_hold(core, held[0], core.dropped_streams.get(body["t"]), conn)
        _store_item(core, ids.object_id_for(body["t"], i + 1), body["r"], bufs, keep=False)
        return
    with st.cond:
        if i < st.received or st.total is not None:
            if held:  # (the first copy's refs were taken over)
                _release_hold(core, held[0], _worker_address(st.rec), conn)
            return  # sent again by a retry of the task
        _store_item(core, st.oid(i), body["r"], bufs, keep=True)
        if held:
            asyncio.ensure_future(core.adopt_contained([st.oid(i)], held, None, _worker_address(st.rec)))
        st.received = i + 1
        st._changed()
        end = st.end
        if end is None or st.received < end[1].get("g", 0):
            return
        st.end = None
        _end(core, st, end[1], end[2])
    rec, body = end[0], end[1]
    if body.get("dyn") and rec.return_ids and not body.get("r"):
        _complete_dynamic(core, rec, body.get("g", 0))


def finish(core: Any, rec: Any, body: dict, bufs: list) -> None:
    """The generator task ended (its reply): the item count, or an error as the last item.

    A user thread reading the reply itself hands the items (notifications)
    to the I/O loop, so the reply can come first: the end then waits in
    ``st.end`` until the last item is in (see ``on_item``).
    """
    core.dropped_streams.pop(rec.spec["t"], None)
    st = core.streams.get(rec.spec["t"])
    dyn = bool(body.get("dyn") and rec.return_ids and not body.get("r"))
    if st is not None:
        with st.cond:
            if st.received < body.get("g", 0):
                st.end = (rec, body, [bytes(b) for b in bufs])
                return
            _end(core, st, body, bufs)
    if dyn:
        _complete_dynamic(core, rec, body.get("g", 0))


def _end(core: Any, st: StreamState, body: dict, bufs: list) -> None:
    # (under st.cond, every item in)
    count = body.get("g", 0)
    if body.get("r") and not body.get("dyn"):  # an error: the item after the last one sent
        # (An interrupt can land between an item's send and the worker's count
        # of it: the error then goes after the items that did arrive.)
        count = max(count, st.received)
        if st.received == count:
            _store_item(core, st.oid(count), body["r"][0], bufs, keep=True)
            st.received = count + 1
        count += 1
    st.total = count
    st._changed()


def _complete_dynamic(core: Any, rec: Any, count: int) -> None:
    first = 2
    refs = [_ref(core, ids.object_id_for(rec.spec["t"], i + first)) for i in range(count)]
    value = DynamicObjectRefGenerator(refs)
    data, vbufs, contained = serialization.dumps(value, "a dynamic generator's refs")
    core.store.complete(rec.return_ids[0], INLINE, data, [bytes(b) for b in vbufs], contained=refs)
    core.streams.pop(rec.spec["t"], None)


def fail(core: Any, rec: Any, err: BaseException) -> None:
    """The generator task failed for good (its worker died): the error ends the stream."""
    core.dropped_streams.pop(rec.spec["t"], None)
    st = core.streams.get(rec.spec["t"])
    if st is None:
        return
    data, bufs = error_payload(err)
    with st.cond:
        if st.total is None:
            _store_item(core, st.oid(st.received), [ERROR, len(bufs) + 1], [data, *bufs], keep=True)
            st.received += 1
            st.total = st.received
            st._changed()


def _conn_of(rec: Any) -> Any:
    """The connection a generator call's items come over: its lease's, or its actor's."""
    if rec.lease is not None:
        return getattr(rec.lease, "conn", None)
    return getattr(rec.actor, "conn", None)


def _ref(core: Any, oid: bytes) -> Any:
    from skate.object_ref import ObjectRef

    return ObjectRef(oid, core.address)


class ObjectRefGenerator:
    """The refs of a streaming generator task's items, in the order they were yielded.

    Iterate it (``for ref in gen``, ``next(gen)``, ``async for``); each item's
    ref is available as soon as the worker yielded it.  An exception in the
    generator becomes the last item (``get`` of it raises).  Follows Ray's
    ``ObjectRefGenerator``.
    """

    def __init__(self, state: StreamState) -> None:
        self._st = state

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> Any:
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None) -> Any:
        st = self._st
        with st.cond:
            while st.handed >= st.received:
                if st.total is not None and st.handed >= st.total:
                    raise StopIteration
                conn = _conn_of(st.rec)
                if conn is not None:
                    conn.watch_threadsafe()  # items come over it: the loop must read it
                if not st.cond.wait(timeout_s if timeout_s is not None else 0.5) and timeout_s is not None:
                    raise exc.GetTimeoutError(f"no item within {timeout_s} seconds")
            return self._hand_out()

    def _hand_out(self) -> Any:
        # (under st.cond)
        st = self._st
        ref = _ref(st.core, st.oid(st.handed))
        st.handed += 1
        if st.backpressure is not None and (st.rec.lease is not None or st.rec.actor is not None):
            st.core.post(_ack, st.core, st.rec, st.handed)
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> Any:
        st = self._st
        loop = asyncio.get_running_loop()
        while True:
            with st.cond:
                if st.handed < st.received:
                    return self._hand_out()
                if st.total is not None and st.handed >= st.total:
                    raise StopAsyncIteration
                fut = loop.create_future()
                st.async_waiters.append((loop, fut))
                conn = _conn_of(st.rec)
                if conn is not None:
                    conn.watch_threadsafe()
            await fut

    def is_finished(self) -> bool:
        """True once the task ended and every item was handed out."""
        st = self._st
        return st.total is not None and st.handed >= st.total

    def __del__(self) -> None:
        st = self.__dict__.get("_st")
        if st is None or st.core.closed:
            return
        core = st.core
        core.streams.pop(st.task_id, None)
        if st.total is None:  # its task still runs
            address = _worker_address(st.rec)
            if address:
                core.dropped_streams[st.task_id] = address  # (items still coming: their holds released there)
                if st.backpressure is not None:  # nobody will take more: the producer waits no more
                    core.post(_ack, core, st.rec, UNBOUNDED)
        with st.cond:
            rest = range(st.handed, st.received)
            st.handed = st.received
        for i in rest:  # items never handed out: free them
            try:
                _ref(st.core, st.oid(i))
            except Exception:  # noqa: BLE001 - shutting down
                pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._st.task_id.hex()})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: every item's ref, in order (follows Ray)."""

    def __init__(self, refs: list) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self) -> tuple:
        return (DynamicObjectRefGenerator, (self._refs,))


def _worker_address(rec: Any) -> Any:
    """The control endpoint of the worker running generator task ``rec`` (None: not known)."""
    if rec.lease is not None:
        return rec.lease.address
    # an actor method's generator: its worker is the actor's
    return rec.actor.info.get("address") if rec.actor is not None else None


#: The count of a ``gen_ack`` for a dropped generator: its producer waits no more (follows Ray).
UNBOUNDED = 1 << 62


def _ack(core: Any, rec: Any, consumed: int) -> None:
    address = _worker_address(rec)
    if address:
        asyncio.ensure_future(_notify_worker(core, address, "gen_ack", {"t": rec.spec["t"], "n": consumed}))


def _release_hold(core: Any, key: bytes, address: Any, conn: Any) -> None:
    """Lets a worker drop a hold that nothing here takes over: at its control
    endpoint ``address`` if known (its exec loop may be running the generator),
    else on ``conn``, the connection the item came on."""
    if address:
        asyncio.ensure_future(_notify_worker(core, address, "release_held", key))
    elif conn is not None and not conn.closed:
        conn.notify("release_held", key)


async def _notify_worker(core: Any, address: Any, method: str, body: Any) -> None:
    """Sends a notification to a worker's control endpoint (dropped if it is gone)."""
    try:
        (await core.conn_to(address)).notify(method, body)
    except (ConnectionError, OSError):
        pass


# --- worker side -----------------------------------------------------------------------


class Acks:
    """Per generator task running here: items the caller has taken (backpressure)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.consumed: dict[bytes, int] = {}

    def on_ack(self, body: dict) -> None:
        with self.cond:
            tid = body["t"]
            if tid in self.consumed:
                self.consumed[tid] = max(self.consumed[tid], body["n"])
                self.cond.notify_all()

    def wait(self, tid: bytes, at_least: int, stop: threading.Event | None = None) -> None:
        with self.cond:
            while self.consumed.get(tid, 0) < at_least and not (stop is not None and stop.is_set()):
                self.cond.wait(0.1)  # (short: a cancel interrupts between waits)


def stream(executor: Any, rep: Any, spec: dict, result: Any, name: str, stop: threading.Event | None = None) -> dict:
    """Runs a generator task's generator, sending each item; returns the final reply body.

    ``stop``: set when the call was cancelled while this runs in a thread of
    an async actor (``stream_async``): no item is made after it.
    """
    tid = spec["t"]
    if not (inspect.isgenerator(result) or inspect.isasyncgen(result)):
        raise TypeError(
            f"{name} was called with num_returns='streaming' or 'dynamic', but it is not a "
            f"generator function (it returned {type(result).__name__})"
        )
    first = 2 if spec["nr"] == DYNAMIC else 1
    bp = spec.get("bp")
    acks = executor.acks
    if bp:
        with acks.cond:
            acks.consumed[tid] = 0
    sent = 0
    executor.streamed[tid] = 0
    try:
        for value in _items(result):
            if stop is not None and stop.is_set():
                result.close()
                raise exc.TaskCancelledError(tid.hex())
            meta, out, refs = executor.encode_value(tid, sent + first - 1, value, name, rep.conn.peer)
            executor.flush_borrows()
            rep.conn.notify("gen_item", _item(executor, rep.conn, tid, sent, first, meta, refs), out)
            value = refs = out = None  # (a traceback of the generator's error keeps this frame)
            sent += 1
            executor.streamed[tid] = sent
            if bp and sent - bp >= 0:
                acks.wait(tid, sent - bp + 1, stop)
    finally:
        with acks.cond:
            acks.consumed.pop(tid, None)
    return _ended(executor, spec, sent)


def _item(executor: Any, conn: Any, tid: bytes, i: int, first: int, meta: list, refs: list) -> dict:
    """The ``gen_item`` body of item ``i``.  Refs its value holds are held
    here, as a returned value's are, until the caller took them over and
    sent ``release_held`` with the item's object id (to this worker's control
    endpoint: the exec loop runs the generator), or ``conn`` closed."""
    body = {"t": tid, "i": i, "r": meta}
    if refs:
        key = ids.object_id_for(tid, i + first)
        executor.hold(key, refs, conn)
        body["h"] = [key, [[r._id, r._owner] for r in refs]]
    return body


def _ended(executor: Any, spec: dict, sent: int) -> dict:
    """The reply that ends a stream of ``sent`` items."""
    body: dict = {"r": [], "g": sent}
    if spec["nr"] == DYNAMIC:
        body["dyn"] = 1
    executor.streamed.pop(spec["t"], None)
    return body


async def stream_async(executor: Any, rep: Any, spec: dict, result: Any, name: str) -> dict:
    """``stream`` for an async actor's method, on its event loop: an async
    generator is iterated there; waits (backpressure, borrows) do not block the loop."""
    tid = spec["t"]
    if inspect.isgenerator(result):  # a sync generator: run in a thread, stopped by a cancel
        stop = threading.Event()
        try:
            return await asyncio.to_thread(stream, executor, rep, spec, result, name, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
    if not inspect.isasyncgen(result):
        stream(executor, rep, spec, result, name)  # raises the TypeError
    first = 2 if spec["nr"] == DYNAMIC else 1
    bp = spec.get("bp")
    acks = executor.acks
    core = executor.core
    if bp:
        with acks.cond:
            acks.consumed[tid] = 0
    sent = 0
    executor.streamed[tid] = 0
    try:
        async for value in result:
            meta, out, refs = executor.encode_value(tid, sent + first - 1, value, name, rep.conn.peer)
            if core.borrows_inflight:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(core.flush_borrows(), core.loop))
            rep.conn.notify("gen_item", _item(executor, rep.conn, tid, sent, first, meta, refs), out)
            value = refs = out = None  # (a traceback of the generator's error keeps this frame)
            sent += 1
            executor.streamed[tid] = sent
            if bp and sent - bp >= 0:
                await asyncio.to_thread(acks.wait, tid, sent - bp + 1)
    finally:
        with acks.cond:
            acks.consumed.pop(tid, None)
    return _ended(executor, spec, sent)


async def take_async(result: Any, n: int, name: str) -> list:
    """``take`` of an async generator, on the running loop."""
    values = [v async for v in result]
    if len(values) != n:
        raise ValueError(f"{name} yielded {len(values)} values, but num_returns={n}")
    return values


def _items(result: Any) -> Any:
    if inspect.isgenerator(result):
        yield from result
        return
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(result.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def take(result: Any, n: int, name: str) -> list:
    """A fixed ``num_returns`` over a generator: its first ``n`` items (exactly ``n``)."""
    values = list(_items(result))
    if len(values) != n:
        raise ValueError(f"{name} yielded {len(values)} values, but num_returns={n}")
    return values
