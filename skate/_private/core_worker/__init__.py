"""The core worker: the runtime inside every driver and worker process.

Parts, and who uses whom (no module here imports one above it)::

    core          CoreWorker: the I/O loop, connections, control store access
      objects       put / get / wait, the owner's get_object service
      refcount      borrows and frees across processes
    memory_store  the owner's table of objects (pure: no I/O)
    errors        failures stored as object values
    submitter     TaskSubmitter: leases and task pushes    (uses a CoreWorker)
    actors        ActorManager: actor creation and calls   (uses submitter's records)
    executor      Executor: runs pushed tasks and actor calls (workers only)

``start_driver`` and ``start_worker`` put them together.
"""

from __future__ import annotations

from typing import Any

from skate._private import daemon
from skate._private.core_worker import introspect
from skate._private.core_worker.actors import ActorManager
from skate._private.core_worker.core import DRIVER, WORKER, CoreWorker
from skate._private.core_worker.executor import Executor
from skate._private.core_worker.submitter import TaskSubmitter


def _assemble(core: CoreWorker) -> CoreWorker:
    introspect.install(core)
    core.submitter = TaskSubmitter(core)
    core.actors = ActorManager(core)
    return core


def start_driver(raylet_socket: str, token: bytes, session_dir: str, **kwargs: Any) -> CoreWorker:
    """A connected core worker for a driver (``kwargs``: ``CoreWorker``'s options).

    Raises the driver's soft limit of open files to its hard limit, as the
    daemons do: a driver holding values from many slabs keeps a descriptor
    per slab (and one connection per worker it talks to).
    """
    daemon.raise_fd_limit()
    core = _assemble(CoreWorker(DRIVER, token, session_dir, **kwargs))
    core.connect(raylet_socket)
    return core


def start_worker(raylet_socket: str, token: bytes, session_dir: str, worker_id: bytes) -> CoreWorker:
    """A connected core worker for a worker process, with its ``Executor``."""
    core = _assemble(CoreWorker(WORKER, token, session_dir, worker_id=worker_id))
    core.executor = Executor(core)
    core.handlers.update(core.executor.handlers())
    core.connect(raylet_socket)
    return core


__all__ = ["CoreWorker", "start_driver", "start_worker"]
