"""The messages of the state commands (``skate logs``, ``memory``, ``stack``, ``list workers``).

Declared apart from ``messages`` to keep that module small; ``messages``
merges ``STATE_REQUESTS`` into its table, so strict decoding covers them too.

::

    node daemon   list_workers None -> [WorkerInfo]     its workers (pid, address, actor, lease)
                  log_list str -> [LogFile]             files of its log folder matching a glob
                  log_read LogRead -> LogChunk          a piece of one of them
    core worker   list_refs None -> [RefInfo]           the object refs this process holds or owns
                  dump_stack None -> str                every thread's Python stack, now
    control store task_events TaskEventBatch             what processes report of their tasks
                  list_task_events ListTaskEvents -> [TaskEvent]
                  report_waits WaitReport               what one process waits on
                  list_waits None -> [WaitReport]
"""

from __future__ import annotations

from typing import Any, TypedDict, Union


class WorkerInfo(TypedDict, total=False):
    worker_id: bytes
    pid: int
    address: Union[list[Any], None]  # None until it registered
    actor_id: Union[bytes, None]
    leased: bool
    alive: bool
    exit: Union[str, None]  # how it ended, when it did


class LogFile(TypedDict):
    name: str
    size: int  # bytes
    mtime: float  # seconds since the epoch


class _LogReadRequired(TypedDict):
    name: str


class LogRead(_LogReadRequired, total=False):
    offset: int  # bytes; a negative offset counts from the end
    max_bytes: int
    tail_lines: int  # with no offset: start this many lines before the end (-1: the whole file)


class LogChunk(TypedDict):
    data: bytes
    offset: int  # where the next read starts
    size: int  # the file's size when read


class RefInfo(TypedDict, total=False):
    object_id: bytes
    owned: bool
    size: int  # bytes; 0 while pending or unknown
    state: str  # PENDING, INLINE, SHM or ERROR
    local: int  # ObjectRef instances in this process
    borrowers: int  # processes that borrowed an owned object
    pending_task: bool  # a task of this process is making it
    owner: Union[list[Any], None]  # the owner's address, for a borrowed ref


class TaskEvent(TypedDict, total=False):
    """What a worker reports about a task it runs (see ``core_worker/task_events``)."""

    task_id: bytes
    name: str
    func: str  # the function's qualified name
    state: str  # RUNNING, FINISHED or FAILED
    job_id: int
    node_id: bytes
    worker_id: bytes
    pid: int
    actor_id: bytes
    start: Union[float, None]  # seconds since the epoch
    end: Union[float, None]
    error_type: str
    error_message: str
    type: str  # set for ACTOR_CREATION_TASK (otherwise told by actor_id)


#: One task event as it travels: ``(task_id, name, state, start, end,
#: actor_id, (error type, message) | None, func, (node_id, worker_id, pid) |
#: None, type)``; a missing ``(node_id, worker_id, pid)`` means the sender's.
TaskEventRow = tuple[
    bytes, str, str, Union[float, None], Union[float, None], Union[bytes, None],
    Union[tuple[str, str], None], str, Union[tuple[bytes, bytes, int], None], str,
]


#: The calls of one actor method that returned, each FINISHED, as columns:
#: ``(actor_id, name, task ids, times)``; the task ids are 16 bytes each, back
#: to back, and the times two little-endian doubles per call (start, end;
#: seconds since the epoch), in the same order.
FinishedCalls = tuple[bytes, str, bytes, bytes]


class TaskEventBatch(TypedDict):
    """What one process reports of its tasks since its last report (rows and
    columns: no per-event dicts, so a busy actor's calls cost little to send
    and keep)."""

    job_id: int
    node_id: bytes
    worker_id: bytes
    pid: int
    rows: list[TaskEventRow]
    calls: list[FinishedCalls]  # the actor calls that returned (all other events are rows)


class BlockedCall(TypedDict, total=False):
    """A ``get``/``wait`` blocked for over a second (see ``core_worker/waits``)."""

    call: str  # "get" or "wait"
    since: float  # seconds since the epoch
    n: int  # objects still missing
    objects: list[str]  # the first few of them (hex ids)
    tasks: list[list[str]]  # [[hex id, name], ...]: tasks this process submitted that make them
    task: str  # the task the blocked thread runs ("" in a driver)


class ActorCalls(TypedDict, total=False):
    """A process's calls to one actor that have had no reply for over a second."""

    actor_id: str
    class_name: str
    queued: int  # not sent yet
    inflight: int  # sent, no reply yet
    state: str


class WaitReport(TypedDict, total=False):
    """What one process waits on (``report_waits``; empty lists: nothing any more)."""

    pid: int
    worker_id: bytes
    node_id: bytes
    job_id: int
    driver: bool
    what: str  # "driver", the actor's class, or "worker"
    blocked: list[BlockedCall]
    actors: list[ActorCalls]


class ListTaskEvents(TypedDict, total=False):
    filters: list[Any]  # [[key, "=" or "!=", value], ...]
    limit: Union[int, None]



STATE_REQUESTS: dict[str, tuple[Any, Any]] = {
    "task_events": (TaskEventBatch, None),
    "list_task_events": (ListTaskEvents, list[TaskEvent]),
    "report_waits": (WaitReport, None),
    "list_waits": (None, list[WaitReport]),
    "list_workers": (None, list[WorkerInfo]),
    "log_list": (str, list[LogFile]),
    "log_read": (LogRead, LogChunk),
    "list_refs": (None, list[RefInfo]),
    "dump_stack": (None, str),
}
