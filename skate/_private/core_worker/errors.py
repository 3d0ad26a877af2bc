"""Errors as object values: how a failure is stored, sent and raised again.

A task's failure is kept as the serialized exception (``error_payload``) in
place of its value; ``as_error`` turns it back into what ``get`` raises.
"""

from __future__ import annotations

from typing import Any

from skate import exceptions as exc
from skate._private import serialization, wire

EXITED = "The actor exited intentionally (exit_actor() was called)."


def as_error(data: Any, bufs: list) -> BaseException:
    """The exception a stored error value stands for (dual-typed for task errors)."""
    if isinstance(data, BaseException):
        return data
    err = serialization.loads(data, bufs)
    if isinstance(err, exc.RayTaskError):
        return err.as_instanceof_cause()
    return err


def remote_to_local(e: wire.RemoteError) -> Exception:
    """A handler error from a daemon as the exception the user should see."""
    text = str(e)
    kind, _, msg = text.partition(": ")
    if kind == "ValueError":
        return ValueError(msg)
    return exc.RaySystemError(text)


def error_payload(err: BaseException) -> tuple[bytes, list]:
    """Serializes an error value for an object (falls back to a plain RayError)."""
    try:
        data, bufs, _ = serialization.dumps(err, "the error")
    except Exception:
        data, bufs, _ = serialization.dumps(exc.RayError(f"{type(err).__name__}: {err}"), "the error")
    return data, [bytes(b) for b in bufs]

