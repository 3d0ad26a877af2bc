"""Dispatch: what a received frame does once it is decoded.

::

    reply / error frame  ->  complete(pending entry)   future, callback or thread-safe callback
    request / notify     ->  handle(conn, ...)         handler(conn, body, bufs) -> answer

A handler returns the reply body, a ``Reply`` (body plus raw buffers), a
future or coroutine of either, or ``DEFER`` when it will answer later with
``conn.reply(rid, ...)``.  A handler that raises answers an error reply and
the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from skate._private.wire.framing import ERROR, REPLY, REQUEST, ProtocolError

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


class RemoteError(Exception):
    """A handler on the peer raised; carries its message."""


class ConnectionLost(ConnectionError):
    """The connection closed before the reply came."""


class DeferredReply:
    """Returned by a handler that will answer later with ``conn.reply(rid, ...)``."""


DEFER = DeferredReply()


class Reply:
    """A handler's answer carrying raw payload buffers besides the body."""

    __slots__ = ("body", "bufs")

    def __init__(self, body: Any, bufs: Any = ()) -> None:
        self.body = body
        self.bufs = bufs


class Pending(NamedTuple):
    """A request sent and not answered yet."""

    target: Any  # an asyncio future (``request``) or a callback(result, error) (``request_cb``)
    decoder: Any  # validates the reply body (``messages.reply_decoder``)
    threadsafe: bool  # the callback may run on a user thread that reads the reply


def complete(target: Any, kind: int, body: Any, bufs: list) -> None:
    """Delivers a reply (or error reply) to what waits for it."""
    if kind == REPLY:
        deliver(target, (body, bufs) if bufs else body, None)
    else:
        deliver(target, None, RemoteError(body))


def deliver(target: Any, result: Any, error: BaseException | None) -> None:
    """Completes a future or calls a callback with a result or an error."""
    if isinstance(target, asyncio.Future):
        if target.done():
            return
        if error is None:
            target.set_result(result)
        else:
            target.set_exception(error)
        return
    target(result, error)


def fail_all(pending: dict, error: BaseException) -> None:
    """Fails every request of a ``pending`` table taken from a closed connection,
    popping them one by one: another thread may still add one (see
    ``Connection.request_cb``)."""
    while pending:
        try:
            entry = pending.popitem()[1]
        except KeyError:  # (its sender took the last one back meanwhile)
            return
        deliver(entry.target, None, error)


def handle(conn: Any, kind: int, rid: int, method: str, body: Any, bufs: list) -> None:
    """Runs the handler of a request or notification (on the connection's loop).

    ``body`` is a ``ProtocolError`` when the message failed validation: a
    request is answered with it, a notification is dropped, and the
    connection keeps serving.
    """
    if isinstance(body, ProtocolError):
        if kind == REQUEST:
            conn.send_frame(ERROR, rid, None, f"ProtocolError: {body}")
        else:
            log.warning("dropped a malformed %r notification: %s", method, body)
        return
    handler = conn.handlers.get(method)
    if handler is None:
        if kind == REQUEST:
            conn.send_frame(ERROR, rid, None, f"no handler for {method!r}")
        else:
            log.warning("notification %r has no handler", method)
        return
    conn.current_rid = rid
    try:
        result = handler(conn, body, bufs)
    except Exception as e:
        if kind == REQUEST:
            log.debug("handler %s failed", method, exc_info=True)
            conn.send_frame(ERROR, rid, None, f"{type(e).__name__}: {e}")
        else:
            log.exception("handler %s failed", method)
        return
    if result is DEFER:
        return
    if isinstance(result, asyncio.Future):
        if kind == REQUEST:
            result.add_done_callback(lambda t, rid=rid: _reply_from(conn, t, rid))
    elif asyncio.iscoroutine(result):
        task = asyncio.ensure_future(result)
        if kind == REQUEST:
            task.add_done_callback(lambda t, rid=rid: _reply_from(conn, t, rid))
        else:
            task.add_done_callback(_log_task_error)
    elif kind == REQUEST:
        send_reply(conn, rid, result)


def send_reply(conn: Any, rid: int, result: Any) -> None:
    """Answers request ``rid`` with a handler's result."""
    if isinstance(result, Reply):
        conn.send_frame(REPLY, rid, None, result.body, result.bufs)
    else:
        conn.send_frame(REPLY, rid, None, result)


def _reply_from(conn: Any, task: asyncio.Future, rid: int) -> None:
    if task.cancelled():
        conn.send_frame(ERROR, rid, None, "cancelled")
        return
    exc = task.exception()
    if exc is not None:
        log.debug("async handler failed", exc_info=exc)
        conn.send_frame(ERROR, rid, None, f"{type(exc).__name__}: {exc}")
    else:
        send_reply(conn, rid, task.result())


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("notification handler failed", exc_info=task.exception())
