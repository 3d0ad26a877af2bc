"""Where a cluster's processes write their output, and how long it is kept.

Each session (one cluster, see ``node.py``) has a log folder next to its
session folder::

    <temp dir>/session_<...>/        token, sockets, spilled objects (removed on stop)
    <temp dir>/logs/session_<...>/   kept after the cluster stops:
        gcs-<pid>.log                  control store (stdout and stderr)
        raylet-<pid>.log               a node daemon
        zygote-<pid>.log               that node's worker fork server
        worker-<pid>.out / .err        a worker's stdout / stderr (created on first line)

The log folders of the last ``CONFIG.logs_kept`` sessions are kept; older
ones are removed when a new session starts (never one whose session folder
still exists, i.e. a cluster that may still run).  Daemons learn their
folder from ``SKATE_LOG_DIR``; workers' lines reach their files through the
node daemon, which reads the workers' output pipes anyway.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Callable
from typing import Any

ENV = "SKATE_LOG_DIR"


def logs_root(base: str) -> str:
    """The folder that holds every session's log folder under temp dir ``base``."""
    return os.path.join(base, "logs")


def session_logs_dir(session_dir: str) -> str:
    """The log folder of a session (created, owner-only)."""
    base, name = os.path.split(os.path.normpath(session_dir))
    path = os.path.join(logs_root(base), name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def prune(base: str, keep: int) -> list[str]:
    """Removes the oldest finished sessions' log folders beyond ``keep``; returns those removed."""
    root = logs_root(base)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    done, live = [], 0
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith("session_"):
            continue
        if os.path.exists(os.path.join(base, name)):
            live += 1  # a session that may still run: never removed
            continue
        try:
            done.append((os.stat(path).st_mtime, path))
        except FileNotFoundError:
            pass
    done.sort()
    extra = len(done) - max(keep - live, 0)
    removed = [path for _, path in done[: max(extra, 0)]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def open_daemon_log(logs_dir: str, name: str) -> tuple[int, str]:
    """Opens a fresh log file for a daemon about to start; returns ``(fd, path)``.

    The file is named after the daemon's pid once known (``name_after_pid``).
    """
    path = os.path.join(logs_dir, f"{name}-starting-{os.urandom(4).hex()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return fd, path


def name_after_pid(path: str, name: str, pid: int) -> str:
    """Renames a daemon's log file to ``<name>-<pid>.log``; returns the new path."""
    new = os.path.join(os.path.dirname(path), f"{name}-{pid}.log")
    try:
        os.rename(path, new)
    except OSError:
        return path
    return new


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 16384, 0))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def own_log(name: str) -> str | None:
    """Points this process's stdout/stderr at ``<log dir>/<name>-<pid>.log``.

    For a process forked from a daemon (the zygote), which would otherwise
    write into its parent's log.  Returns the path, or None without a log dir.
    """
    logs_dir = os.environ.get(ENV)
    if not logs_dir:
        return None
    path = os.path.join(logs_dir, f"{name}-{os.getpid()}.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return None
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path


class WorkerLogs:
    """Appends each worker output line to ``worker-<pid>.out`` / ``.err``.

    At most ``max_open`` files are open at a time (least recently written
    closed first); each line is one ``write`` on an append-only descriptor,
    so the files are complete whenever someone reads them.
    """

    def __init__(self, logs_dir: str, max_open: int = 64) -> None:
        self.logs_dir = logs_dir
        self.max_open = max_open
        self.fds: collections.OrderedDict[tuple[int, bool], int] = collections.OrderedDict()

    def write(self, pid: int, line: bytes, is_err: bool) -> None:
        """Appends one line of worker ``pid``'s stdout (or stderr)."""
        key = (pid, is_err)
        fd = self.fds.get(key)
        if fd is None:
            path = os.path.join(self.logs_dir, f"worker-{pid}.{'err' if is_err else 'out'}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError:
                return
            self.fds[key] = fd
            while len(self.fds) > self.max_open:
                os.close(self.fds.popitem(last=False)[1])
        else:
            self.fds.move_to_end(key)
        try:
            os.write(fd, line if line.endswith(b"\n") else line + b"\n")
        except OSError:
            pass

    def close(self) -> None:
        """Closes every open file."""
        while self.fds:
            os.close(self.fds.popitem()[1])


def tee_worker_output(on_output: Callable[[Any, bytes, bool], None]) -> Callable[[Any, bytes, bool], None]:
    """Wraps a node daemon's worker-output callback so each line also lands in the log folder.

    Returns ``on_output`` itself when this process has no log folder.
    """
    logs_dir = os.environ.get(ENV)
    if not logs_dir or not os.path.isdir(logs_dir):
        return on_output
    files = WorkerLogs(logs_dir)

    def tee(worker: Any, line: bytes, is_err: bool) -> None:
        files.write(worker.pid, line, is_err)
        on_output(worker, line, is_err)

    return tee
