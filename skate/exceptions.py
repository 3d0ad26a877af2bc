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
    """A task or actor method raised.

    ``get`` raises it as an instance of both ``RayTaskError`` and the class the
    task raised, so ``except ValueError`` and ``except RayTaskError`` both work.
    The message holds the remote traceback.
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        proctitle: str = "",
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle
        self.pid = pid if pid is not None else os.getpid()
        self.ip = ip or _host_ip()
        self.actor_repr = actor_repr
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        where = f"{self.function_name}() (pid={self.pid}, ip={self.ip}"
        where += f", actor={self.actor_repr})" if self.actor_repr else ")"
        return f"{type(self.cause).__name__ if self.cause else 'RayTaskError'}: {where}\n{self.traceback_str}".rstrip()

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple:
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid, self.ip, self.actor_repr))

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of both RayTaskError and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self, cause_cls) or not _subclassable(cause_cls):
            return self
        cls = _dual_class(cause_cls)
        err = cls.__new__(cls)
        RayTaskError.__init__(
            err, self.function_name, self.traceback_str, self.cause, pid=self.pid, ip=self.ip, actor_repr=self.actor_repr
        )
        err.args = (self._message(),)
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


def _rebuild_task_error(name: str, tb: str, cause: Any, pid: int, ip: str, actor_repr: str | None) -> RayTaskError:
    return RayTaskError(name, tb, cause, pid=pid, ip=ip, actor_repr=actor_repr).as_instanceof_cause()


def _host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class RayActorError(RayError):
    """An actor is dead or unreachable, so the call cannot run."""

    def __init__(self, cause: Any = None, actor_id: str | None = None, error_msg: str | None = None) -> None:
        self.actor_id = actor_id
        self.cause = cause
        self.error_msg = error_msg or (str(cause) if cause else "The actor died unexpectedly before finishing this task.")
        super().__init__(self.error_msg)


class ActorDiedError(RayActorError):
    """The actor is dead: killed, crashed, or its constructor raised."""


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached right now (it may be restarting)."""


class WorkerCrashedError(RayError):
    """The worker running the task died (crashed, exited or was killed)."""

    def __init__(self, message: str = "The worker died unexpectedly while executing this task.") -> None:
        super().__init__(message)


class TaskCancelledError(RayError):
    """The task was cancelled with ``cancel``."""

    def __init__(self, task_id: Any = None, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or f"Task {task_id} was cancelled.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.task_id, str(self)))


class GetTimeoutError(RayError, TimeoutError):
    """``get`` did not get every value before its timeout."""


class ObjectLostError(RayError):
    """An object's value is lost and cannot be rebuilt."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost and cannot be recovered.")

    def __reduce__(self) -> tuple:
        return (type(self), (self.object_ref_hex, None, "", str(self)))


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching an object from another node took too long."""


class OwnerDiedError(ObjectLostError):
    """The process that owned an object died, so its value is lost."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex,
            owner_address,
            call_site,
            message
            or f"Object {object_ref_hex} is lost because its owner (the process that created it) died.",
        )


class ReferenceCountingAssertionError(ObjectLostError):
    """An object was freed while still referenced (a skate bug)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost object could not be rebuilt from its lineage."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message or f"Object {object_ref_hex} is lost and could not be rebuilt from the task that made it.",
        )


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """A lost object's task has no retries (``max_retries``) left to rebuild it."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message or f"Object {object_ref_hex} is lost, and the task that made it has no retries left "
            "(max_retries) to rebuild it.",
        )


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """A lost object's task record was evicted (too much lineage kept), so it cannot be rebuilt."""

    def __init__(self, object_ref_hex: str = "", owner_address: Any = None, call_site: str = "", message: str | None = None) -> None:
        super().__init__(
            object_ref_hex, owner_address, call_site,
            message or f"Object {object_ref_hex} is lost, and the record of the task that made it was "
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


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, BaseException)]
