"""Segments never outlive their node daemon, however it dies.

::

    node daemon starts  -> <session>/stores/<store prefix>  (its pid)
    it stops cleanly    -> deletes its segments and the record
    it dies (SIGKILL)   -> the record stays; the next sweep sees its pid gone
                           and unlinks /dev/shm/<store prefix>-* and its spill folder

Sweeps run at ``skate stop`` (also ``--force``), when a node or an
embedded cluster starts, and when a ``Cluster`` shuts down.
"""

from __future__ import annotations

import os
import shutil

import psutil

from skate._private import private_paths, proctitle
from skate._private.object_store import shm


def record_store(session_dir: str, prefix: str, pid: int) -> str:
    """Notes that the node daemon ``pid`` keeps its segments under ``prefix``; returns the record's path."""
    folder = private_paths.private_dir(os.path.join(session_dir, "stores"))
    path = os.path.join(folder, prefix)
    private_paths.replace_private(path, str(pid).encode())
    return path


def _alive_daemon(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        # A running node daemon shows its title (``skate::raylet``), one that is
        # still starting its module's command line.
        text = " ".join(p.cmdline())
        return p.status() != psutil.STATUS_ZOMBIE and (
            text.startswith(proctitle.PREFIX + "raylet") or "skate._private.raylet" in text
        )
    except (psutil.Error, ValueError):
        return False


def remove_segments(prefix: str) -> int:
    """Unlinks every segment (and recycled segment) of the store ``prefix``; returns how many."""
    if shm.SHM_DIR is None:
        return 0
    n = 0
    for name in os.listdir(shm.SHM_DIR):
        if name.startswith(prefix + "-"):
            shm.unlink(os.path.join(shm.SHM_DIR, name))  # (never another user's file)
            n += 1
    return n


def sweep_session(session_dir: str) -> int:
    """Removes the segments of this session's dead node daemons; returns how many segments."""
    folder = os.path.join(session_dir, "stores")
    try:
        prefixes = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    n = 0
    for prefix in prefixes:
        path = os.path.join(folder, prefix)
        try:
            pid = int(private_paths.read_private(path))
        except (OSError, ValueError):
            continue
        if _alive_daemon(pid):
            continue
        n += remove_segments(prefix)
        shutil.rmtree(os.path.join(session_dir, "spill", prefix.rsplit("-", 1)[-1]), ignore_errors=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return n


def sweep_all(temp_dir: str) -> int:
    """Sweeps every session under ``temp_dir`` (this user's skate folder)."""
    try:
        names = [n for n in os.listdir(temp_dir) if n.startswith("session_")]
    except FileNotFoundError:
        return 0
    return sum(sweep_session(os.path.join(temp_dir, n)) for n in names)
