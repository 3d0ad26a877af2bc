"""One framed, authenticated connection, usable from any thread.

::

    any thread --send()--> sendmsg on a dup of the socket (under a lock);
                           what the kernel does not take is flushed by the loop
    socket --recv--> FrameReader --frames--> handshake (until done) / dispatch
                ^ read by the loop (add_reader or a transport), or by a user
                  thread blocked on a reply over this connection (``lead``)

Servers (the control store, node daemons, every worker and driver) give a
handler table ``{method: callable}`` (see ``dispatch``).  Either side of a
connection may send requests, so a connection made by a client is used for
calls in both directions.

Reading happens on the event loop, but any thread may *send* (no hop to the
I/O thread to submit a task or return a result).  Client connections read their socket themselves
(``loop.add_reader``, not a transport), so a *user* thread may take over
reading: a thread that blocks waiting for a reply reads the socket itself
instead of being woken by the I/O thread -- one thread wake-up less per
synchronous call.  Reading is guarded by one lock; when the loop finds a
thread reading, it stops watching the socket, and watches it again when
replies are owed that no thread is reading for (see ``watch``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from skate._private import messages
from skate._private.config import CONFIG
from skate._private.wire import dispatch
from skate._private.wire.admission import Gate, peer_pid
from skate._private.wire.dispatch import ConnectionLost, Handler, Pending, RemoteError
from skate._private.wire.framing import (
    ERROR,
    NOTIFY,
    REPLY,
    REQUEST,
    FrameReader,
    ProtocolError,
    encode_sized,
)
from skate._private.wire.handshake import AuthError, ClientHandshake, ServerHandshake
from skate._private.wire.records import RecordCipher
from skate._private.wire.spin import SPIN_S, ReadOn
from skate._private.wire.watch import watch_of

log = logging.getLogger(__name__)

#: Pieces per sendmsg call (the kernel takes at most IOV_MAX, 1024 on Linux).
_IOV_CHUNK = 512

_STRICT = bool(CONFIG.strict_messages)


class Connection(asyncio.BufferedProtocol):
    """One framed, authenticated connection (client or server side)."""

    def __init__(
        self,
        token: bytes,
        handlers: dict[str, Handler],
        server: bool,
        gate: Gate | None = None,
        identity: bytes = b"",
        expect: bytes | None = None,
        read_on: ReadOn | None = None,
    ) -> None:
        """``identity``: what a server proves it is; ``expect``: what a client insists on (None:
        any); ``read_on``: a ``spin.ReadOn`` that reads on after each request (an exec endpoint)."""
        self.token = token
        self.handlers = handlers
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self.authed = False
        self.on_close: list[Callable[[Connection], None]] = []
        self.peer: Any = None  # set by handlers, e.g. the peer's worker id
        self.current_rid = 0  # the request being handled (for handlers that DEFER)
        self.pending: dict[int, Pending] = {}  # requests sent and not answered yet
        self._rids = itertools.count(1)
        self._reader = FrameReader(max_payload=CONFIG.max_frame_bytes)
        self._hs = ServerHandshake(token, identity) if server else ClientHandshake(token, expect)
        self._secure = False  # TCP: every frame goes in an encrypted, authenticated record
        self._cipher: RecordCipher | None = None
        self._plain: FrameReader | None = None  # decrypted bytes, for TCP
        self.loop = asyncio.get_running_loop()
        self.loop_ident = threading.get_ident()  # of the thread that runs it (connections are made there)
        self._wlock = threading.Lock()
        self._backlog: collections.deque = collections.deque()
        self._wsock: socket.socket | None = None
        self.rsock: socket.socket | None = None  # raw mode (clients): read by _on_readable
        self._rlock = threading.Lock()  # held by whoever reads and parses frames
        self.loop_reading = False  # the loop watches rsock (loop thread only)
        self.leader: int | None = None  # ident of a user thread reading, if any
        self.led = False  # a user thread read it: the loop then reads only for replies no thread awaits
        self._poller: Any = None  # a poll object on rsock, for leading threads
        self.off_since = 0.0
        self.owed_mark = 0
        self.read_on = read_on
        self.fd = -1  # the socket's descriptor
        self.peer_pid: int | None = None  # the process at the other end of a Unix socket
        self._gate = gate  # the listener's count of unauthenticated connections
        self._deadline: asyncio.TimerHandle | None = None  # of the handshake

    # --- protocol callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._setup(transport.get_extra_info("socket"))

    def attach(self, sock: socket.socket) -> None:
        """Raw mode: reads ``sock`` itself from the loop (loop thread)."""
        sock.setblocking(False)
        self.rsock = sock
        self._setup(sock)
        self._add_reader()

    def _setup(self, sock: socket.socket) -> None:
        self.peer_pid = peer_pid(sock)  # (None unless a Unix socket)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._secure = True
        self.fd = sock.fileno()
        self._wsock = socket.socket(fileno=os.dup(self.fd))
        self._wsock.setblocking(False)
        if self.server and not self._admit():
            return
        hello = self._hs.hello()
        if hello:
            self._send([hello])

    # --- limits before authentication (server side) --------------------------------
    def _admit(self) -> bool:
        """Takes a slot among the listener's unauthenticated connections and starts the deadline;
        past the cap (``Config.max_pending_handshakes``) the connection is closed at once: peers
        without the token cannot pin memory and descriptors of a daemon."""
        gate, self._gate = self._gate, None
        if gate is not None:
            if not gate.take():
                self._fail(ConnectionRefusedError("too many connections waiting to authenticate"))
                return False
            self._gate = gate
        self._deadline = self.loop.call_later(CONFIG.handshake_timeout_s, self._handshake_expired)
        return True

    def _handshake_expired(self) -> None:
        self._deadline = None
        if not self.authed and not self.closed:
            self._fail(AuthError(f"no handshake within {CONFIG.handshake_timeout_s} s"))

    def _handshake_over(self) -> None:
        """Gives back the slot taken by ``_admit`` (authenticated, or closed)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._gate is not None:
            self._gate.give_back()
            self._gate = None

    @property
    def challenged(self) -> bool:
        """The handshake got as far as the server's challenge."""
        return self._hs.challenged

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.received(nbytes)
        self._handle_received()

    def _handle_received(self) -> None:  # the frames received so far (the reading thread)
        try:
            self._consume()
        except AuthError as e:
            log.warning("rejected connection: %s", e)
            self._fail_threadsafe(e)
        except ProtocolError as e:
            log.warning("dropped a connection that broke the protocol: %s", e)
            self._fail_threadsafe(e)
        except Exception as e:  # a broken frame: drop the connection
            log.exception("bad frame")
            self._fail_threadsafe(e)
        if self.read_on is not None:
            self.read_on.run(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionLost("connection closed"))

    def eof_received(self) -> bool:
        return False

    def _consume(self) -> None:
        reader = self._reader
        if not self.authed:
            used, out = self._hs.feed(reader.held())
            reader.consume(used)
            if out:
                self._send([out])
            if not self._hs.done:
                return
            if self._secure:
                self._cipher = RecordCipher(*self._hs.keys())
                self._plain = FrameReader(max_payload=CONFIG.max_frame_bytes)
            self.authed = True
            self._handshake_over()
            self.ready.set_result(True)
        if self._cipher is not None:
            self._cipher.open(reader, self._plain)
            reader = self._plain
        frames = reader.frames()
        try:
            for kind, rid, method, body, bufs in frames:
                self._dispatch(kind, rid, method, body, bufs)
                if self.closed:
                    return
        finally:
            reader.release()

    # --- sending (any thread) -------------------------------------------------
    def _send(self, pieces: list, nbytes: int = -1) -> None:
        """Writes ``pieces`` (``nbytes`` in all, if known), queuing what the socket won't take (any thread)."""
        with self._wlock:
            if self.closed:
                return
            if self._cipher is not None:
                pieces = self._cipher.seal(pieces)
                nbytes = -1
            if self._backlog:
                self._backlog.extend(memoryview(p).cast("B") for p in pieces)
                return
            # sendmsg takes at most IOV_MAX (1024 here) pieces at once: a
            # frame with more (a task with thousands of returns) goes in parts.
            i = 0
            while i < len(pieces):
                chunk = pieces if (not i and len(pieces) <= _IOV_CHUNK) else pieces[i : i + _IOV_CHUNK]
                i += len(chunk)
                try:
                    n = self._wsock.sendmsg(chunk)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as e:
                    self.loop.call_soon_threadsafe(self._fail, e)
                    return
                if n == nbytes:
                    return  # all of it (the usual case)
                for p in chunk:
                    mv = memoryview(p).cast("B")
                    if n >= mv.nbytes:
                        n -= mv.nbytes
                        continue
                    self._backlog.append(mv[n:])
                    n = 0
                if self._backlog:
                    self._backlog.extend(memoryview(p).cast("B") for p in pieces[i:])
                    break
            if self._backlog:
                if threading.get_ident() == self.loop_ident:
                    self._arm()
                else:
                    self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if not self.closed:
            self.loop.add_writer(self._wsock.fileno(), self._flush)

    def _flush(self) -> None:
        with self._wlock:
            while self._backlog:
                chunk = list(itertools.islice(self._backlog, 0, _IOV_CHUNK))
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

    def send_frame(self, kind: int, rid: int, method: str | None, body: Any, bufs: Any = ()) -> None:
        """Sends one frame (any thread)."""
        self._send(*encode_sized(kind, rid, method, body, bufs))

    # --- raw-mode reading (loop, or a leading user thread) ---------------------------
    def _on_readable(self) -> None:
        if not self._rlock.acquire(False):
            # A user thread is reading: stop watching until replies are owed
            # that nobody reads for (level-triggered, so this would spin).
            self._stop_watching()
            return
        try:
            self.read_some()
        except Exception:  # never out of a reader callback: the loop would drop its watch
            log.exception("reading a connection failed")
            self._fail(ConnectionLost("reading failed"))
        finally:
            self._rlock.release()
        if self.closed:
            self._close_rsock()  # (_fail could not while this held the read lock)
        elif self.led and not self.pending:
            self._stop_watching()  # nothing owed: a thread waiting for the next reply reads it
            if any(not p.threadsafe for p in list(self.pending.values())):
                self.watch()  # a request only the loop may answer was sent meanwhile

    def _stop_watching(self) -> None:
        if self.loop_reading:
            self.loop_reading = False
            self.loop.remove_reader(self.rsock.fileno())
            self.off_since = time.monotonic()
            watch_of(self.loop).add(self)

    def watch(self) -> None:
        """Makes the loop read this connection again (loop thread)."""
        if not self.loop_reading and not self.closed and self.rsock is not None:
            self._add_reader()

    def _add_reader(self) -> None:
        fd = self.rsock.fileno()
        try:
            self.loop.add_reader(fd, self._on_readable)
        except RuntimeError:
            # uvloop keeps the watch of an fd that saw POLLERR, closed, until it
            # is removed: drop it and watch afresh.
            self.loop.remove_reader(fd)
            self.loop.add_reader(fd, self._on_readable)
        self.loop_reading = True

    def watch_threadsafe(self) -> None:
        """``watch`` from any thread (a no-op when the loop already reads)."""
        if not self.loop_reading and not self.closed:
            self.loop.call_soon_threadsafe(self.watch)

    def read_some(self) -> int:
        """Reads what the socket has and handles the frames (the reading thread).

        Returns the bytes read: 0 when there was nothing, -1 at EOF or error.
        """
        try:
            n = self._reader.recv_from(self.rsock or self._wsock)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self._fail_threadsafe(e)
            return -1
        if n == 0:
            self._fail_threadsafe(ConnectionLost("connection closed"))
            return -1
        self._handle_received()
        return -1 if self.closed else n

    def lead(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Reads this connection in the calling thread until ``done()`` (user threads).

        Replies whose callbacks are thread-safe are handled right here; all
        else is passed to the loop.  Returns at once when another thread (or
        the loop) is reading, at ``deadline`` (monotonic), or when the
        connection closes; the caller then waits the ordinary way.
        """
        if self.rsock is None or not self.authed or self.closed or not self._rlock.acquire(False):
            return
        fd = self.rsock.fileno()
        if fd < 0:  # closed by the loop just now
            self._rlock.release()
            return
        self.leader = threading.get_ident()
        self.led = True
        try:
            poller = self._poller
            if poller is None:
                poller = self._poller = select.poll()
                poller.register(fd, select.POLLIN)
            # Poll without sleeping for a little while first: a reply that
            # comes quickly then costs no wake-up (see Config.spin_us).
            spin_until = time.perf_counter() + SPIN_S if SPIN_S else 0.0
            while not done() and not self.closed:
                n = self.read_some()
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
                if poller.poll(wait_ms) and self.read_some() < 0:
                    break
        finally:
            self.leader = None
            self._rlock.release()
            try:
                if self.closed:
                    self.loop.call_soon_threadsafe(self._close_rsock)
                elif self.pending:
                    # Replies are owed that this thread will not read.
                    self.watch_threadsafe()
            except RuntimeError:  # the loop is closed: shutting down
                pass

    # --- dispatch -----------------------------------------------------------
    def _dispatch(self, kind: int, rid: int, method: str, raw: Any, bufs: list) -> None:
        # The body is decoded right here: ``raw`` is a view of the receive buffer.
        # (A leader is set only while its thread holds the read lock: the thread running this.)
        if kind == REPLY:
            pending = self.pending
            entry = pending.get(rid)
            if entry is None:
                return  # late: the request was given up
            try:
                body = entry.decoder.decode(raw)
                if _STRICT:
                    messages.check_declared(body, raw, f"reply #{rid}")
            except (msgspec.DecodeError, messages.UndeclaredFields) as e:
                self._reply_unreadable(rid, entry, e)
                return
            if self.leader is None:  # the loop (the target may be a future)
                if pending.pop(rid, None) is not None:
                    dispatch.deliver(entry.target, (body, bufs) if bufs else body, None)
            elif entry.threadsafe:  # a user thread reading: a thread-safe callback
                if pending.pop(rid, None) is not None:
                    entry.target((body, bufs) if bufs else body, None)
            else:  # only the loop may run it
                self.loop.call_soon_threadsafe(self._settle, rid, (body, bufs) if bufs else body, None)
            return
        if kind == ERROR:
            entry = self.pending.get(rid)
            if entry is not None:
                body = messages.UNTYPED.decode(raw)
                if self.leader is not None and not entry.threadsafe:
                    self.loop.call_soon_threadsafe(self._settle, rid, None, RemoteError(body))
                elif self.pending.pop(rid, None) is not None:
                    dispatch.complete(entry.target, kind, body, bufs)
            return
        try:
            body = messages.request_decoder(method).decode(raw)
            if _STRICT:
                messages.check_declared(body, raw, repr(method))
        except msgspec.DecodeError as e:
            body = ProtocolError(f"bad {method!r} message: {e}")
        except messages.UndeclaredFields as e:
            body = ProtocolError(str(e))
        if self.leader is not None:  # requests are handled on the loop
            self.loop.call_soon_threadsafe(dispatch.handle, self, kind, rid, method, body, bufs)
        else:
            dispatch.handle(self, kind, rid, method, body, bufs)

    def _settle(self, rid: int, result: Any, error: BaseException | None) -> None:  # (loop thread)
        entry = self.pending.pop(rid, None)
        if entry is not None:
            dispatch.deliver(entry.target, result, error)

    def _reply_unreadable(self, rid: int, entry: Pending, e: Exception) -> None:
        log.warning("a reply failed validation: %s", e)
        err = ProtocolError(f"malformed reply: {e}")
        if entry.threadsafe and self.leader is not None:
            if self.pending.pop(rid, None) is not None:
                dispatch.deliver(entry.target, None, err)
        else:
            self.loop.call_soon_threadsafe(self._settle, rid, None, err)

    def reply(self, rid: int, body: Any, bufs: Any = ()) -> None:
        """Answers request ``rid`` (any thread); for handlers that return ``DEFER``."""
        self._send(*encode_sized(REPLY, rid, None, body, bufs))

    # --- closing ---------------------------------------------------------------
    def _fail_threadsafe(self, exc: BaseException) -> None:
        if threading.get_ident() == self.loop_ident:
            self._fail(exc)
        else:
            self.loop.call_soon_threadsafe(self._fail, exc)

    def _close_rsock(self) -> None:
        """Closes the raw socket once no thread reads it (loop thread)."""
        sock = self.rsock
        if sock is None or sock.fileno() < 0:
            return
        if not self._rlock.acquire(False):
            return  # the leading thread calls this again when it stops
        try:
            if self.loop_reading:
                self.loop_reading = False
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
        pending, self.pending = self.pending, {}
        dispatch.fail_all(pending, ConnectionLost(str(exc)))
        with self._wlock:
            if self._wsock is not None:
                if self._backlog:
                    self.loop.remove_writer(self._wsock.fileno())
                    self._backlog.clear()
                self._wsock.close()
        if self.transport is not None:
            self.transport.close()
        if self.rsock is not None:
            try:
                self.rsock.shutdown(socket.SHUT_RDWR)  # wakes a thread polling it
            except OSError:
                pass
            self._close_rsock()
        for cb in self.on_close:
            try:
                cb(self)
            except Exception:
                log.exception("on_close callback failed")

    # --- requests ------------------------------------------------------------------
    def request(self, method: str, body: Any = None, bufs: Any = ()) -> asyncio.Future:
        """Sends a request (loop thread); the future gets ``body`` or ``(body, bufs)``."""
        fut = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(ConnectionLost("connection closed"))
            return fut
        rid = next(self._rids)
        self.pending[rid] = Pending(fut, messages.reply_decoder(method), False)
        if not self.loop_reading and self.rsock is not None:
            self.watch()
        self._send(*encode_sized(REQUEST, rid, method, body, bufs))
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
        pending = self.pending  # (the table _fail empties, if it swaps it out meanwhile)
        pending[rid] = Pending(callback, messages.reply_decoder(method), threadsafe)
        if threadsafe:
            if not self.loop_reading and self.rsock is not None and threading.get_ident() == self.loop_ident:
                self.watch()  # sent by the loop itself: no thread is about to wait for it
        elif not self.loop_reading and self.rsock is not None:
            self.watch_threadsafe()  # only the loop may run this callback
        self._send(*encode_sized(REQUEST, rid, method, body, bufs))
        if self.closed and pending.pop(rid, None) is not None:  # (not failed by _fail: it was done)
            self.loop.call_soon_threadsafe(callback, None, ConnectionLost("connection closed"))

    def notify(self, method: str, body: Any = None, bufs: Any = ()) -> None:
        """Sends a one-way message (any thread)."""
        self._send(*encode_sized(NOTIFY, 0, method, body, bufs))

    def close(self) -> None:
        """Closes the connection; pending requests fail with ConnectionLost."""
        self._fail(ConnectionLost("closed locally"))


__all__ = ["Connection", "ConnectionLost", "RemoteError"]
