"""Exceptions raised by skate, under Ray's names."""

from __future__ import annotations

import os
import socket
from typing import Any


class RayError(Exception):
    """Base of every skate error."""


class RaySystemError(RayError):
    """skate itself failed."""

    def __init__(self, client_exc: Any = "", traceback_str: str | None = None) -> None:
        super().__init__(client_exc)
        self.client_exc = client_exc
        self.traceback_str = traceback_str


class RayTaskError(RayError):
    """A task or actor method raised (follows Ray's ``RayTaskError``).

    ``get`` raises it as an instance of both ``RayTaskError`` and the class the
    task raised (``RayTaskError(ValueError)``), so ``except ValueError`` and
    ``except RayTaskError`` both work; ``cause`` is the original exception.
    When the original exception cannot be rebuilt in the caller (its class
    takes other constructor arguments than its ``args``, or cannot be
    unpickled there), ``cause`` is None but the error keeps the class (when
    it can), the message and the remote traceback.

    Its text names where the error happened -- ``skate::f() (pid=..., ip=...)``,
    with the actor's id and repr for an actor call -- then the remote
    traceback with skate's own frames left out.
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        proctitle: str | None = None,
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
        actor_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"skate::{function_name}"
        self.pid = pid if pid is not None else os.getpid()
        self.ip = ip or _host_ip()
        self.actor_repr = actor_repr
        self.actor_id = actor_id
        self._cause_cls: type | None = type(cause) if cause is not None else None
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        where = f"{self.proctitle}() (pid={self.pid}, ip={self.ip}"
        if self.actor_repr or self.actor_id:
            where += f", actor_id={self.actor_id}, repr={self.actor_repr}"
        return f"{where})\n{self.traceback_str}".rstrip()

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple:
        return (
            _rebuild_task_error,
            (self.function_name, self.traceback_str, _pickled_or_none(self.cause), self.proctitle, self.pid,
             self.ip, self.actor_repr, self.actor_id, _pickled_or_none(self._cause_cls)),
        )

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of both RayTaskError and the cause's class (when
        that class can be subclassed; else this plain RayTaskError)."""
        cause_cls = self._cause_cls
        if cause_cls is None or isinstance(self, cause_cls) or not _subclassable(cause_cls):
            return self
        cls = _dual_class(cause_cls)
        try:
            err = cls.__new__(cls)
            RayTaskError.__init__(
                err, self.function_name, self.traceback_str, self.cause, self.proctitle, self.pid, self.ip,
                self.actor_repr, self.actor_id,
            )
            err._cause_cls = cause_cls
        except Exception:  # noqa: BLE001 - a class that cannot be made this way stays plain
            return self
        try:
            err.args = (self._message(),)
        except (AttributeError, TypeError):  # e.g. ``args`` is a read-only property of the cause's class
            pass
        return err


_DUAL: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type:
    cls = _DUAL.get(cause_cls)
    if cls is None:

        def __getattr__(self: Any, name: str) -> Any:
            # Attributes of the user's exception (e.g. ``e.errno``) read through.
            cause = self.__dict__.get("cause")
            if cause is None:
                raise AttributeError(name)
            return getattr(cause, name)

        cls = type(
            f"RayTaskError({cause_cls.__name__})",
            (RayTaskError, cause_cls),
            {"__getattr__": __getattr__, "__str__": RayTaskError.__str__, "__module__": "skate.exceptions"},
        )
        _DUAL[cause_cls] = cls
    return cls


def _subclassable(cls: type) -> bool:
    try:
        type("probe", (RayTaskError, cls), {})
        return True
    except TypeError:
        return False


def _pickled_or_none(obj: Any) -> bytes | None:
    """``obj`` pickled on its own, so that a cause the caller cannot rebuild does not
    make the whole error unreadable; None when it cannot be pickled at all."""
    if obj is None:
        return None
    import cloudpickle

    try:
        return cloudpickle.dumps(obj)
    except Exception:  # noqa: BLE001
        return None


def _loaded_or_none(data: bytes | None) -> Any:
    if data is None:
        return None
    import pickle

    try:
        return pickle.loads(data)
    except Exception:  # noqa: BLE001 - e.g. __init__ needs other arguments than args
        return None


def _rebuild_task_error(
    name: str, tb: str, cause: bytes | None, proctitle: str, pid: int, ip: str, actor_repr: str | None,
    actor_id: str | None = None, cause_cls: bytes | None = None,
) -> RayTaskError:
    err = RayTaskError(name, tb, _loaded_or_none(cause), proctitle, pid, ip, actor_repr, actor_id)
    if err.cause is None:
        err._cause_cls = _loaded_or_none(cause_cls)
    return err.as_instanceof_cause()


def _host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class RayActorError(RayError):
    """An actor is dead or unreachable, so the call cannot run (follows Ray)."""

    def __init__(
        self,
        actor_id: str | None = None,
        error_msg: str | None = None,
        actor_init_failed: bool = False,
        preempted: bool = False,
        *,
        cause: Any = None,
    ) -> None:
        self.actor_id = actor_id
        self.cause = cause
        self.actor_init_failed = actor_init_failed
        self.preempted = preempted
        self.error_msg = error_msg or (str(cause) if cause else "The actor died unexpectedly before finishing this task.")
        super().__init__(self.error_msg)

    def __reduce__(self) -> tuple:
        return (_rebuild_actor_error, (type(self), dict(self.__dict__)))


def _rebuild_actor_error(cls: type, state: dict) -> RayActorError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("error_msg"))
    err.__dict__.update(state)
    return err


class ActorDiedError(RayActorError):
    """The actor is dead: killed, crashed, or its constructor raised (follows Ray).

    ``cause`` is the constructor's ``RayTaskError`` when ``__init__`` raised.
    """

    def __init__(self, cause: Any = None, *, actor_id: str | None = None, error_msg: str | None = None) -> None:
        super().__init__(actor_id, error_msg, isinstance(cause, RayTaskError), cause=cause)


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached right now (it may be restarting)."""

    def __init__(self, error_message: str = "The actor is temporarily unavailable.", actor_id: str | None = None) -> None:
        super().__init__(actor_id, error_message)


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor with this name already exists in the namespace."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message


class ActorHandleNotFoundError(ValueError, RayError):
    """An actor handle was used in a process that cannot reach the actor."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message


class WorkerCrashedError(RayError):
    """The worker running the task died (crashed, exited or was killed)."""

    def __init__(self, message: str = "The worker died unexpectedly while executing this task.") -> None:
        super().__init__(message)


class TaskCancelledError(RayError):
    """The task was cancelled with ``cancel``."""

    def __init__(self, task_id: Any = None, error_message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(error_message or f"Task {task_id} was cancelled.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.task_id, str(self)))


class GetTimeoutError(RayError, TimeoutError):
    """``get`` did not get every value before its timeout."""


class ObjectLostError(RayError):
    """An object's value is lost and cannot be rebuilt."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", *, message: str | None = None) -> None:
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost and cannot be recovered.")

    def __reduce__(self) -> tuple:
        return (_rebuild_lost, (type(self), self.object_ref_hex, str(self)))


def _rebuild_lost(cls: type, object_ref_hex: str, message: str) -> ObjectLostError:
    return cls(object_ref_hex, message=message)


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching an object from another node took too long."""


class OwnerDiedError(ObjectLostError):
    """The process that owned an object died, so its value is lost."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", *, message: str | None = None) -> None:
        super().__init__(
            object_ref_hex,
            owner_address,
            call_site,
            message=message or f"Object {object_ref_hex} is lost because its owner (the process that created it) died.",
        )


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """An object was freed while still referenced (a skate bug)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost object could not be rebuilt from its lineage."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message=message or f"Object {object_ref_hex} is lost and could not be rebuilt from the task that made it.",
        )


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectLostError):
    """A lost object's task has no retries (``max_retries``) left to rebuild it."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message=message or f"Object {object_ref_hex} is lost, and the task that made it has no retries left "
            "(max_retries) to rebuild it.",
        )


class ObjectReconstructionFailedLineageEvictedError(ObjectLostError):
    """A lost object's task record was evicted (too much lineage kept), so it cannot be rebuilt."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message=message or f"Object {object_ref_hex} is lost, and the record of the task that made it was "
            "evicted (SKATE_MAX_LINEAGE_ENTRIES), so it cannot be rebuilt.",
        )


class ObjectStoreFullError(RayError):
    """The shared-memory store has no room for an object, even after spilling."""


class OutOfMemoryError(RayError):
    """A worker was killed because the node ran out of memory."""


class OutOfDiskError(RayError):
    """The disk used for spilling is full."""


class NodeDiedError(RayError):
    """The node running the task died."""


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed."""


class ActorPlacementGroupRemoved(RayError):
    """The actor's placement group was removed."""


class PendingCallsLimitExceeded(RayError):
    """An actor handle has too many calls waiting."""


class TaskUnschedulableError(RayError):
    """The task can never be scheduled."""


class ActorUnschedulableError(RayError):
    """The actor can never be scheduled."""


class RuntimeEnvSetupError(RayError):
    """The runtime environment could not be set up."""


class CrossLanguageError(RayError):
    """An error from a task in another language."""


class LocalRayletDiedError(RayError):
    """The node daemon of this process died."""


class RayChannelError(RaySystemError):
    """A compiled-graph channel failed or was closed."""


class RayChannelTimeoutError(RayChannelError, TimeoutError):
    """A compiled-graph channel read or write timed out."""


class RayCgraphCapacityExceeded(RaySystemError):
    """Too many compiled-graph executions are in flight."""


class AsyncioActorExit(RayError):
    """Raised inside an async actor to exit it."""


class AuthenticationError(RayError):
    """A peer failed the cluster-token check."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ObjectFreedError(ObjectLostError):
    """The object was freed (e.g. by its owner) before it was read."""


class ObjectRefStreamEndOfStreamError(RayError):
    """A generator's stream of refs has ended."""


class PlasmaObjectNotAvailable(RayError):
    """An object is not available in the local shared-memory store."""


class RpcError(RayError):
    """A request between skate's processes failed."""

    def __init__(self, message: str, rpc_code: int | None = None) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code


class UnserializableException(RayError):
    """An exception that could not be deserialized; carries its original stack trace."""

    def __init__(self, original_stack_trace: str) -> None:
        super().__init__(original_stack_trace)
        self._original_stack_trace = original_stack_trace

    def __str__(self) -> str:
        return (
            "Failed to deserialize exception. Refer to the original stack trace below:\n"
            + self._original_stack_trace
        )


class UserCodeException(RayError):
    """Marks an exception raised by user code (as opposed to skate's own)."""


class OufOfBandObjectRefSerializationException(RayError):
    """An ObjectRef was serialized outside skate's own serialization (spelled like Ray's)."""


class RayDirectTransportError(RaySystemError):
    """A tensor transport between actors failed."""


class StreamingGeneratorReplayInconsistentError(RaySystemError):
    """A retried generator task yielded different values than its first run."""


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, BaseException)]
