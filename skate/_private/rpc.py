"""The one RPC layer: authenticated framed connections on an asyncio loop.

Servers (the control store, node daemons, every worker and driver) register
a handler table ``{method: callable}``; a handler gets ``(conn, body, bufs)``
and returns ``body`` or ``(body, bufs)`` (or a coroutine of either).  Either
side of a connection may send requests, so a connection made by a client is
used for calls in both directions.

Handshake (client C, server S, token T)::

    S -> C : nonce_s
    C -> S : mac(T, nonce_s, "c") + nonce_c
    S -> C : mac(T, nonce_c, "s")          (or close, on a wrong answer)

Only after it does either side decode a msgpack header, let alone a pickle.

Reading happens on the event loop (asyncio's buffered protocol), but any
thread may *send*: a connection writes with ``sendmsg`` on a duplicate of the
socket's descriptor under a lock, and only what the kernel does not take at
once is left for the loop to flush.  So a user thread submitting a task, or a
worker thread returning a result, costs no hop to the I/O thread.

Client connections read from their socket themselves (``loop.add_reader``,
not a transport), so a *user* thread may take over reading: a thread that
blocks waiting for a reply reads the socket itself (``Connection.lead``)
instead of being woken by the I/O thread -- one thread wake-up less per
synchronous call.  Reading is guarded
by one lock; when the loop finds a thread reading, it stops watching the
socket, and watches it again when replies are owed that no thread is
reading for (see ``_Watch``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from skate._private import protocol as P
from skate._private.config import CONFIG

log = logging.getLogger(__name__)

Handler = Callable[..., Any]

_SPIN_S = CONFIG.spin_us / 1e6


class RemoteError(Exception):
    """A handler on the peer raised; carries its message."""


class ConnectionLost(ConnectionError):
    """The connection closed before the reply came."""


class Connection(asyncio.BufferedProtocol):
    """One framed, authenticated connection (client or server side)."""

    def __init__(self, token: bytes, handlers: dict[str, Handler], server: bool, gate: _Gate | None = None) -> None:
        self.token = token
        self.handlers = handlers
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self.on_close: list[Callable[[Connection], None]] = []
        self.peer: Any = None  # set by handlers, e.g. the peer's worker id
        self._pending: dict[int, asyncio.Future] = {}
        self._rids = itertools.count(1)
        self._buf = bytearray(1 << 16)
        self._view = memoryview(self._buf)
        self._n = 0
        self._auth_state = 0
        self._nonce = b""
        self.loop = asyncio.get_running_loop()
        self._wlock = threading.Lock()
        self._backlog: collections.deque = collections.deque()
        self._wsock: socket.socket | None = None
        #: Raw mode (client connections): the socket read by _on_readable.
        self._rsock: socket.socket | None = None
        self._rlock = threading.Lock()  # held by whoever reads and parses frames
        self._loop_reading = False  # the loop watches _rsock (loop thread only)
        self._leader: int | None = None  # ident of a user thread reading, if any
        #: A user thread has read it itself: from then on the loop reads it
        #: only while replies are owed that no thread reads for.
        self._led = False
        self._poller: Any = None  # a poll object on _rsock, for leading threads
        self.off_since = 0.0
        self._owed_mark = 0
        self._gate = gate  # the listener's count of unauthenticated connections
        self._deadline: asyncio.TimerHandle | None = None  # of the handshake

    # --- protocol callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._setup(transport.get_extra_info("socket"))

    def attach(self, sock: socket.socket) -> None:
        """Raw mode: reads ``sock`` itself from the loop (loop thread)."""
        sock.setblocking(False)
        self._rsock = sock
        self._setup(sock)
        self._add_reader()

    def _setup(self, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wsock = socket.socket(fileno=os.dup(sock.fileno()))
        self._wsock.setblocking(False)
        if self.server:
            if not self._admit():
                return
            self._nonce = P.new_nonce()
            self._send([self._nonce])

    # --- limits before authentication (server side) --------------------------------
    def _admit(self) -> bool:
        """Takes a slot among the listener's unauthenticated connections and starts the deadline.

        Past the cap (``Config.max_pending_handshakes``) the connection is
        closed at once: peers without the token cannot pin memory and
        descriptors of a daemon.
        """
        gate, self._gate = self._gate, None
        if gate is not None:
            if gate.pending >= gate.cap:
                gate.refused += 1
                if gate.refused == 1:
                    log.warning("more than %d connections waiting to authenticate: closing new ones", gate.cap)
                self._fail(ConnectionRefusedError("too many connections waiting to authenticate"))
                return False
            gate.pending += 1
            self._gate = gate
        self._deadline = self.loop.call_later(CONFIG.handshake_timeout_s, self._handshake_expired)
        return True

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self._auth_state < 2 and not self.closed:
            self._fail(P.AuthError(f"no handshake within {CONFIG.handshake_timeout_s} s"))

    def _handshake_over(self) -> None:
        """Gives back the slot taken by ``_admit`` (authenticated, or closed)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._gate is not None:
            self._gate.pending -= 1
            self._gate = None

    # --- sending (any thread) -------------------------------------------------
    def _send(self, pieces: list) -> None:
        with self._wlock:
            if self.closed:
                return
            if self._backlog:
                self._backlog.extend(memoryview(p).cast("B") for p in pieces)
                return
            try:
                n = self._wsock.sendmsg(pieces)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.loop.call_soon_threadsafe(self._fail, e)
                return
            for p in pieces:
                mv = memoryview(p).cast("B")
                if n >= mv.nbytes:
                    n -= mv.nbytes
                    continue
                self._backlog.append(mv[n:])
                n = 0
            if self._backlog:
                if threading.current_thread() is _loop_thread(self.loop):
                    self._arm()
                else:
                    self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if not self.closed:
            self.loop.add_writer(self._wsock.fileno(), self._flush)

    def _flush(self) -> None:
        with self._wlock:
            while self._backlog:
                chunk = list(itertools.islice(self._backlog, 0, 512))
                try:
                    n = self._wsock.sendmsg(chunk)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    self.loop.remove_writer(self._wsock.fileno())
                    self.loop.call_soon(self._fail, e)
                    return
                while n and self._backlog:
                    head = self._backlog[0]
                    if n >= head.nbytes:
                        n -= head.nbytes
                        self._backlog.popleft()
                    else:
                        self._backlog[0] = head[n:]
                        n = 0
            self.loop.remove_writer(self._wsock.fileno())

    # --- raw-mode reading (loop, or a leading user thread) ---------------------------
    def _on_readable(self) -> None:
        if not self._rlock.acquire(False):
            # A user thread is reading: stop watching until replies are owed
            # that nobody reads for (level-triggered, so this would spin).
            self._stop_watching()
            return
        try:
            self._read_some()
        except Exception:  # never out of a reader callback: the loop would drop its watch
            log.exception("reading a connection failed")
            self._fail(ConnectionLost("reading failed"))
        finally:
            self._rlock.release()
        if self.closed:
            self._close_rsock()  # (_fail could not while this held the read lock)
        elif self._led and not self._pending:
            self._stop_watching()  # nothing owed: a thread waiting for the next reply reads it
            if any(type(cb) is not tuple for cb in list(self._pending.values())):
                self.watch()  # a request only the loop may answer was sent meanwhile

    def _stop_watching(self) -> None:
        if self._loop_reading:
            self._loop_reading = False
            self.loop.remove_reader(self._rsock.fileno())
            self.off_since = time.monotonic()
            _watch(self.loop).add(self)

    def watch(self) -> None:
        """Makes the loop read this connection again (loop thread)."""
        if not self._loop_reading and not self.closed and self._rsock is not None:
            self._add_reader()

    def _add_reader(self) -> None:
        fd = self._rsock.fileno()
        try:
            self.loop.add_reader(fd, self._on_readable)
        except RuntimeError:
            # uvloop keeps the watch of an fd that saw POLLERR, closed, until it
            # is removed: drop it and watch afresh.
            self.loop.remove_reader(fd)
            self.loop.add_reader(fd, self._on_readable)
        self._loop_reading = True

    def watch_threadsafe(self) -> None:
        """``watch`` from any thread (a no-op when the loop already reads)."""
        if not self._loop_reading and not self.closed:
            self.loop.call_soon_threadsafe(self.watch)

    def _read_some(self) -> int:
        """Reads what the socket has and handles the frames.

        Returns the bytes read: 0 when there was nothing, -1 at EOF or error.
        """
        try:
            n = self._rsock.recv_into(self.get_buffer(0))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self._fail_threadsafe(e)
            return -1
        if n == 0:
            self._fail_threadsafe(ConnectionLost("connection closed"))
            return -1
        self.buffer_updated(n)
        return -1 if self.closed else n

    def lead(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Reads this connection in the calling thread until ``done()`` (user threads).

        Replies whose callbacks are thread-safe are handled right here; all
        else is passed to the loop.  Returns at once when another thread (or
        the loop) is reading, at ``deadline`` (monotonic), or when the
        connection closes; the caller then waits the ordinary way.
        """
        if self._rsock is None or self._auth_state < 2 or self.closed or not self._rlock.acquire(False):
            return
        fd = self._rsock.fileno()
        if fd < 0:  # closed by the loop just now
            self._rlock.release()
            return
        self._leader = threading.get_ident()
        self._led = True
        try:
            poller = self._poller
            if poller is None:
                poller = self._poller = select.poll()
                poller.register(fd, select.POLLIN)
            # Poll without sleeping for a little while first: a reply that
            # comes quickly then costs no wake-up (see Config.spin_us).
            spin_until = time.perf_counter() + _SPIN_S if _SPIN_S else 0.0
            while not done() and not self.closed:
                n = self._read_some()
                if n < 0:
                    break
                if n:
                    continue
                if spin_until and time.perf_counter() < spin_until:
                    os.sched_yield()  # polite: a runnable thread here goes first
                    continue
                if deadline is None:
                    wait_ms = 200
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait_ms = min(200, int(left * 1000) + 1)
                if poller.poll(wait_ms) and self._read_some() < 0:
                    break
        finally:
            self._leader = None
            self._rlock.release()
            try:
                if self.closed:
                    self.loop.call_soon_threadsafe(self._close_rsock)
                elif self._pending:
                    # Replies are owed that this thread will not read.
                    self.watch_threadsafe()
            except RuntimeError:  # the loop is closed: shutting down
                pass

    def get_buffer(self, sizehint: int) -> memoryview:
        free = len(self._buf) - self._n
        if free < 65536:
            self._grow(len(self._buf) * 2)
        return self._view[self._n :]

    def _grow(self, size: int) -> None:
        new = bytearray(size)
        new[: self._n] = self._view[: self._n]
        self._view.release()
        self._buf = new
        self._view = memoryview(new)

    def buffer_updated(self, nbytes: int) -> None:
        self._n += nbytes
        try:
            self._consume()
        except P.AuthError as e:
            log.warning("rejected connection: %s", e)
            self._fail_threadsafe(e)
        except Exception as e:  # a broken frame: drop the connection
            log.exception("bad frame")
            self._fail_threadsafe(e)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionLost("connection closed"))

    def eof_received(self) -> bool:
        return False

    # --- framing ------------------------------------------------------------
    def _consume(self) -> None:
        view = self._view
        pos = 0
        n = self._n
        if self._auth_state < 2:
            pos = self._handshake(view, n)
            if self._auth_state < 2:
                self._compact(pos)
                return
        prefix = P.PREFIX
        psize = prefix.size
        while n - pos >= psize:
            hlen, plen = prefix.unpack_from(view, pos)
            end = pos + psize + hlen + plen
            if end > n:
                if end - pos > len(self._buf):
                    self._compact(pos)
                    self._grow(end - pos + 65536)
                    return
                break
            hstart = pos + psize
            kind, rid, method, body, lens = P.decode_header(view[hstart : hstart + hlen])
            bufs = []
            off = hstart + hlen
            for ln in lens:
                bufs.append(bytes(view[off : off + ln]))
                off += ln
            pos = end
            self._dispatch(kind, rid, method, body, bufs)
            if self.closed:
                return
        self._compact(pos)

    def _compact(self, pos: int) -> None:
        if pos:
            rest = self._n - pos
            if rest:
                self._view[:rest] = self._view[pos : self._n]
            self._n = rest

    def _handshake(self, view: memoryview, n: int) -> int:
        if self.server:
            if self._auth_state == 0:
                if n > P.MAC_LEN + P.NONCE_LEN:
                    # A client sends nothing more before the server's proof.
                    raise P.AuthError(f"peer sent {n} bytes before authenticating (the answer is {P.MAC_LEN + P.NONCE_LEN})")
                if n < P.MAC_LEN + P.NONCE_LEN:
                    return 0
                answer = bytes(view[: P.MAC_LEN])
                if not P.check_mac(self.token, self._nonce, b"c", answer):
                    raise P.AuthError("wrong cluster token")
                theirs = bytes(view[P.MAC_LEN : P.MAC_LEN + P.NONCE_LEN])
                self._send([P.mac(self.token, theirs, b"s")])
                self._auth_state = 2
                self._handshake_over()
                self.ready.set_result(True)
                return P.MAC_LEN + P.NONCE_LEN
            return 0
        # client
        if self._auth_state == 0:
            if n < P.NONCE_LEN:
                return 0
            self._nonce = P.new_nonce()
            self._send([P.mac(self.token, bytes(view[: P.NONCE_LEN]), b"c") + self._nonce])
            self._auth_state = 1
            return P.NONCE_LEN + self._handshake_rest(view[P.NONCE_LEN : n], n - P.NONCE_LEN)
        return self._handshake_rest(view, n)

    def _handshake_rest(self, view: memoryview, n: int) -> int:
        if n < P.MAC_LEN:
            return 0
        if not P.check_mac(self.token, self._nonce, b"s", bytes(view[: P.MAC_LEN])):
            raise P.AuthError("server failed to prove the cluster token")
        self._auth_state = 2
        self.ready.set_result(True)
        return P.MAC_LEN

    # --- dispatch -----------------------------------------------------------
    def _dispatch(self, kind: int, rid: int, method: str, body: Any, bufs: list) -> None:
        if self._leader is not None and self._leader == threading.get_ident():
            # Read by a user thread: only thread-safe reply callbacks run here.
            if kind == P.REPLY or kind == P.ERROR:
                fut = self._pending.get(rid)
                if type(fut) is tuple:
                    del self._pending[rid]
                    if kind == P.REPLY:
                        fut[0]((body, bufs) if bufs else body, None)
                    else:
                        fut[0](None, RemoteError(body))
                    return
            self.loop.call_soon_threadsafe(self._dispatch_on_loop, kind, rid, method, body, bufs)
            return
        self._dispatch_on_loop(kind, rid, method, body, bufs)

    def _dispatch_on_loop(self, kind: int, rid: int, method: str, body: Any, bufs: list) -> None:
        if kind == P.REPLY or kind == P.ERROR:
            fut = self._pending.pop(rid, None)
            if fut is None:
                return
            if type(fut) is tuple:  # a thread-safe callback (request_cb(threadsafe=True))
                fut = fut[0]
            if type(fut) is not asyncio.Future and not isinstance(fut, asyncio.Future):
                # A callback registered by request_cb (possibly from another thread).
                if kind == P.REPLY:
                    fut((body, bufs) if bufs else body, None)
                else:
                    fut(None, RemoteError(body))
                return
            if fut.done():
                return
            if kind == P.REPLY:
                fut.set_result((body, bufs) if bufs else body)
            else:
                fut.set_exception(RemoteError(body))
            return
        handler = self.handlers.get(method)
        if handler is None:
            if kind == P.REQUEST:
                self._write(P.ERROR, rid, None, f"no handler for {method!r}")
            return
        self.current_rid = rid
        try:
            result = handler(self, body, bufs)
        except Exception as e:
            if kind == P.REQUEST:
                log.debug("handler %s failed", method, exc_info=True)
                self._write(P.ERROR, rid, None, f"{type(e).__name__}: {e}")
            else:
                log.exception("handler %s failed", method)
            return
        if result is DEFER:
            return
        if isinstance(result, asyncio.Future):
            if kind == P.REQUEST:
                result.add_done_callback(lambda t, rid=rid: self._reply_from(t, rid))
        elif asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            if kind == P.REQUEST:
                task.add_done_callback(lambda t, rid=rid: self._reply_from(t, rid))
            else:
                task.add_done_callback(_log_task_error)
        elif kind == P.REQUEST:
            self._reply(rid, result)

    def _reply_from(self, task: asyncio.Task, rid: int) -> None:
        if task.cancelled():
            self._write(P.ERROR, rid, None, "cancelled")
            return
        exc = task.exception()
        if exc is not None:
            log.debug("async handler failed", exc_info=exc)
            self._write(P.ERROR, rid, None, f"{type(exc).__name__}: {exc}")
        else:
            self._reply(rid, task.result())

    def _reply(self, rid: int, result: Any) -> None:
        if isinstance(result, Reply):
            self._write(P.REPLY, rid, None, result.body, result.bufs)
        else:
            self._write(P.REPLY, rid, None, result)

    def _write(self, kind: int, rid: int, method: str | None, body: Any, bufs: Any = ()) -> None:
        self._send(P.encode(kind, rid, method, body, bufs))

    def reply(self, rid: int, body: Any, bufs: Any = ()) -> None:
        """Answers request ``rid`` (any thread); for handlers that return ``DEFER``."""
        self._send(P.encode(P.REPLY, rid, None, body, bufs))

    def _fail_threadsafe(self, exc: BaseException) -> None:
        if threading.current_thread() is _loop_thread(self.loop):
            self._fail(exc)
        else:
            self.loop.call_soon_threadsafe(self._fail, exc)

    def _close_rsock(self) -> None:
        """Closes the raw socket once no thread reads it (loop thread)."""
        sock = self._rsock
        if sock is None or sock.fileno() < 0:
            return
        if not self._rlock.acquire(False):
            return  # the leading thread calls this again when it stops
        try:
            if self._loop_reading:
                self._loop_reading = False
                self.loop.remove_reader(sock.fileno())
            sock.close()
        finally:
            self._rlock.release()

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._handshake_over()
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # mark retrieved
        pending, self._pending = self._pending, {}
        lost = ConnectionLost(str(exc))
        for fut in pending.values():
            if type(fut) is tuple:
                fut = fut[0]
            if isinstance(fut, asyncio.Future):
                if not fut.done():
                    fut.set_exception(lost)
            else:
                fut(None, lost)
        with self._wlock:
            if self._wsock is not None:
                if self._backlog:
                    self.loop.remove_writer(self._wsock.fileno())
                    self._backlog.clear()
                self._wsock.close()
        if self.transport is not None:
            self.transport.close()
        if self._rsock is not None:
            try:
                self._rsock.shutdown(socket.SHUT_RDWR)  # wakes a thread polling it
            except OSError:
                pass
            self._close_rsock()
        for cb in self.on_close:
            try:
                cb(self)
            except Exception:
                log.exception("on_close callback failed")

    # --- public API (loop thread only) ---------------------------------------
    def request(self, method: str, body: Any = None, bufs: Any = ()) -> asyncio.Future:
        """Sends a request; the future gets ``body`` or ``(body, bufs)``."""
        fut = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(ConnectionLost("connection closed"))
            return fut
        rid = next(self._rids)
        self._pending[rid] = fut
        if not self._loop_reading and self._rsock is not None:
            self.watch()
        self._send(P.encode(P.REQUEST, rid, method, body, bufs))
        return fut

    def request_cb(
        self,
        method: str,
        body: Any,
        bufs: Any,
        callback: Callable[[Any, BaseException | None], None],
        threadsafe: bool = False,
    ) -> None:
        """Sends a request from any thread; ``callback(result, error)`` runs on the loop.

        With ``threadsafe`` the callback may instead run in a user thread
        that reads the reply itself (see ``lead``).
        """
        if self.closed:
            self.loop.call_soon_threadsafe(callback, None, ConnectionLost("connection closed"))
            return
        rid = next(self._rids)
        if threadsafe:
            self._pending[rid] = (callback,)
            if not self._loop_reading and self._rsock is not None and threading.current_thread() is _loop_thread(self.loop):
                self.watch()  # sent by the loop itself: no thread is about to wait for it
        else:
            self._pending[rid] = callback
            if not self._loop_reading and self._rsock is not None:
                self.watch_threadsafe()  # only the loop may run this callback
        self._send(P.encode(P.REQUEST, rid, method, body, bufs))
        if self.closed and self._pending.pop(rid, None) is not None:
            self.loop.call_soon_threadsafe(callback, None, ConnectionLost("connection closed"))

    def notify(self, method: str, body: Any = None, bufs: Any = ()) -> None:
        """Sends a one-way message (any thread)."""
        self._send(P.encode(P.NOTIFY, 0, method, body, bufs))

    def close(self) -> None:
        """Closes the connection; pending requests fail with ConnectionLost."""
        self._fail(ConnectionLost("closed locally"))


_LOOP_THREADS: dict = {}


def _loop_thread(loop: asyncio.AbstractEventLoop) -> threading.Thread | None:
    t = _LOOP_THREADS.get(id(loop))
    if t is None:
        try:
            if asyncio.get_running_loop() is loop:
                t = _LOOP_THREADS[id(loop)] = threading.current_thread()
        except RuntimeError:
            return None
    return t


class SpinningSelector(selectors.EpollSelector):
    """An epoll selector that, right after handling events, polls for a little
    while (``Config.spin_us``) before it sleeps.

    For an execution loop that answers one call at a time, the next call of
    a caller in a loop arrives soon after the reply: caught while polling, it
    costs no wake-up from sleep.  An idle loop polls once per message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._busy = False

    def select(self, timeout: float | None = None) -> list:
        if self._busy and _SPIN_S and (timeout is None or timeout > 0):
            poll = super().select
            end = time.perf_counter() + _SPIN_S
            while True:
                ready = poll(0)
                if ready:
                    return ready
                if time.perf_counter() >= end:
                    break
                os.sched_yield()
        ready = super().select(timeout)
        self._busy = bool(ready)
        return ready


class _Watch:
    """Per loop: connections the loop stopped reading because a thread led.

    Every few milliseconds it makes the loop read again a connection that
    owes replies nobody is reading for (results nobody asked for yet; those
    awaited on the loop are watched for at once), and, after a quiet spell,
    any connection at all (so that a closed peer is noticed).
    """

    TICK_S = 0.01
    QUIET_S = 0.5

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: set[Connection] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, conn: Connection) -> None:
        self.conns.add(conn)
        if self.timer is None:
            self.timer = self.loop.call_later(self.TICK_S, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.closed or conn._loop_reading:
                self.conns.discard(conn)
                continue
            if conn._leader is not None:
                conn.off_since = now
                continue
            owed = conn._pending
            # A reply owed since the last tick, that no thread is reading for
            # (a thread between sending and reading is not lost: it is waited for).
            oldest = next(iter(owed), 0) if owed else 0
            if (oldest and oldest == conn._owed_mark) or (not owed and now - conn.off_since > self.QUIET_S):
                self.conns.discard(conn)
                conn.watch()
            else:
                conn._owed_mark = oldest
        if self.conns:
            self.timer = self.loop.call_later(self.TICK_S, self._tick)


_WATCHES: dict = {}


def _watch(loop: asyncio.AbstractEventLoop) -> _Watch:
    w = _WATCHES.get(id(loop))
    if w is None or w.loop is not loop:
        for key, other in list(_WATCHES.items()):
            if other.loop.is_closed():
                del _WATCHES[key]
        w = _WATCHES[id(loop)] = _Watch(loop)
    return w


class DeferredReply:
    """Returned by a handler that will answer later with ``conn.reply(rid, ...)``."""


DEFER = DeferredReply()


class Reply:
    """A handler's answer carrying raw payload buffers besides the body."""

    __slots__ = ("body", "bufs")

    def __init__(self, body: Any, bufs: Any = ()) -> None:
        self.body = body
        self.bufs = bufs


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("notification handler failed", exc_info=task.exception())


class _Gate:
    """Per listener: how many accepted connections have not authenticated yet."""

    __slots__ = ("cap", "pending", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pending = 0
        self.refused = 0


def _server_side(token: bytes, handlers: dict[str, Handler]) -> Callable[[], Connection]:
    gate = _Gate(CONFIG.max_pending_handshakes)
    return lambda: Connection(token, handlers, server=True, gate=gate)


async def serve_tcp(
    host: str, port: int, token: bytes, handlers: dict[str, Handler], sock: socket.socket | None = None
) -> asyncio.base_events.Server:
    """Starts a TCP server on ``host:port`` (port 0 picks a free one), or on a bound ``sock``."""
    loop = asyncio.get_running_loop()
    factory = _server_side(token, handlers)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(factory, host, port, reuse_address=True)


async def serve_unix(path: str, token: bytes, handlers: dict[str, Handler]) -> asyncio.base_events.Server:
    """Starts a Unix-socket server at ``path`` (owner-only permissions)."""
    loop = asyncio.get_running_loop()
    if os.path.exists(path):
        os.unlink(path)
    srv = await loop.create_unix_server(_server_side(token, handlers), path)
    os.chmod(path, 0o600)
    return srv


async def connect(
    address: str | tuple, token: bytes, handlers: dict[str, Handler] | None = None, timeout: float = 10.0
) -> Connection:
    """Connects to a ``"host:port"``, ``(host, port)`` or Unix socket path and authenticates."""
    loop = asyncio.get_running_loop()
    handlers = handlers if handlers is not None else {}

    def factory() -> Connection:
        return Connection(token, handlers, server=False)

    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        conn = await _connect_once(loop, address, factory, max(deadline - loop.time(), 0.001))
        try:
            await asyncio.wait_for(asyncio.shield(conn.ready), max(deadline - loop.time(), 0.001))
        except (asyncio.TimeoutError, ConnectionError) as e:
            conn.close()
            if isinstance(e, ConnectionLost):
                if conn._auth_state == 0 and loop.time() + delay < deadline:
                    # Closed before it challenged us: the listener holds its
                    # cap of unauthenticated connections (a flood?); retry.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise P.AuthError(
                    f"connection to {address} was refused during authentication: "
                    "is the cluster token right?"
                ) from None
            raise
        return conn


async def _connect_once(
    loop: asyncio.AbstractEventLoop, address: str | tuple, factory: Callable[[], Connection], timeout: float
) -> Connection:
    if isinstance(address, str) and address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address
    else:
        host, port = split_address(address)
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, target), timeout)
    except BaseException:
        sock.close()
        raise
    conn = factory()
    conn.attach(sock)
    return conn


def split_address(address: str | tuple) -> tuple[str, int]:
    """``"host:port"`` or ``(host, port)`` as a tuple."""
    if isinstance(address, (tuple, list)):
        return address[0], int(address[1])
    host, _, port = address.rpartition(":")
    return host, int(port)
