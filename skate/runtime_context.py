"""``get_runtime_context()``: ids of the current job, task, actor, node and worker."""

from __future__ import annotations

from typing import Any

from skate._private import ids


class RuntimeContext:
    """A view of where the calling code runs."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def get_job_id(self) -> str:
        """The current job's id (hex)."""
        return self._core.job_id.to_bytes(4, "little").hex()

    @property
    def job_id(self) -> ids.JobID:
        return ids.JobID(self._core.job_id.to_bytes(4, "little"))

    def get_task_id(self) -> str | None:
        """The running task's id (hex), or None in the driver."""
        tid = getattr(self._core.ctx, "task_id", None)
        return tid.hex() if tid else None

    @property
    def task_id(self) -> ids.TaskID | None:
        tid = getattr(self._core.ctx, "task_id", None)
        return ids.TaskID(tid) if tid else None

    def get_actor_id(self) -> str | None:
        """The current actor's id (hex), or None outside an actor."""
        ex = self._core.executor
        aid = ex.actor_id if ex is not None else None
        return aid.hex() if aid else None

    @property
    def actor_id(self) -> ids.ActorID | None:
        ex = self._core.executor
        return ids.ActorID(ex.actor_id) if ex is not None and ex.actor_id else None

    def get_node_id(self) -> str:
        """The id (hex) of the node this process runs on."""
        return self._core.node_id.hex()

    @property
    def node_id(self) -> ids.NodeID:
        return ids.NodeID(self._core.node_id)

    def get_worker_id(self) -> str:
        """This process's worker id (hex)."""
        return self._core.worker_id.hex()

    @property
    def worker_id(self) -> ids.WorkerID:
        return ids.WorkerID(self._core.worker_id)

    @property
    def namespace(self) -> str | None:
        """The namespace of named actors created here."""
        return self._core.namespace

    @property
    def gcs_address(self) -> str:
        """The control store's address."""
        return self._core.gcs_address

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor is a restarted incarnation (its constructor ran again after a failure)."""
        ex = self._core.executor
        return bool(ex is not None and getattr(ex, "reconstructed", False))

    def get_assigned_resources(self) -> dict:
        """Resources of the current task or actor (not tracked per worker yet)."""
        return {}

    def get(self) -> dict:
        """The context as a dict."""
        return {
            "job_id": self.job_id,
            "node_id": self.node_id,
            "namespace": self.namespace,
            "task_id": self.task_id,
            "actor_id": self.actor_id,
        }

    def __getitem__(self, key: str) -> Any:
        return self.get()[key]
