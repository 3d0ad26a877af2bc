"""The messages of the state commands (``skate logs``, ``memory``, ``stack``, ``list workers``).

Declared apart from ``messages`` to keep that module small; ``messages``
merges ``STATE_REQUESTS`` into its table, so strict decoding covers them too.

::

    node daemon   list_workers None -> [WorkerInfo]     its workers (pid, address, actor, lease)
                  log_list str -> [LogFile]             files of its log folder matching a glob
                  log_read LogRead -> LogChunk          a piece of one of them
    core worker   list_refs None -> [RefInfo]           the object refs this process holds or owns
                  dump_stack None -> str                every thread's Python stack, now
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


STATE_REQUESTS: dict[str, tuple[Any, Any]] = {
    "list_workers": (None, list[WorkerInfo]),
    "log_list": (str, list[LogFile]),
    "log_read": (LogRead, LogChunk),
    "list_refs": (None, list[RefInfo]),
    "dump_stack": (None, str),
}
