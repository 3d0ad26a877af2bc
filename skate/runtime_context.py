"""``get_runtime_context()``: where the calling code runs (follows Ray 2.60's ``RuntimeContext``).

In a worker the values describe the task or actor call running in the
calling thread or coroutine; in the driver, the driver (which is in no
placement group).  Node labels are not implemented, so the accessors for
them report that truthfully.
"""

from __future__ import annotations

import json
import os
from typing import Any

from skate._private import ids, task_context
from skate._private.config import CONFIG

_DEFAULT_TASK_RESOURCES = {"CPU": 1.0}


def _module_of(obj: Any) -> str:
    """``obj``'s module; for code of a script run as ``__main__``, the script's file
    name without ``.py`` (as Ray names it)."""
    module = getattr(obj, "__module__", None) or ""
    if module == "__main__":
        code = getattr(obj, "__code__", None)
        filename = code.co_filename if code is not None else ""
        if filename and not filename.startswith("<"):
            return os.path.splitext(os.path.basename(filename))[0]
    return module


class RuntimeContext:
    """A view of where the calling code runs (follows Ray's ``ray.runtime_context.RuntimeContext``)."""

    def __init__(self, core: Any) -> None:
        self._core = core

    # --- internals ---------------------------------------------------------------------
    def _in_worker(self) -> bool:
        return self._core.executor is not None

    def _spec(self) -> dict | None:
        return task_context.CURRENT.get()

    def _actor_spec(self) -> dict | None:
        ex = self._core.executor
        return ex.actor_spec if ex is not None and ex.actor_id else None

    # --- job ------------------------------------------------------------------------------
    def get_job_id(self) -> str:
        """The current job's id (hex); in a task, the job of the driver that submitted it."""
        return self._core.job_id.to_bytes(4, "little").hex()

    @property
    def job_id(self) -> ids.JobID:
        """The current job's id (deprecated in Ray: use ``get_job_id()``)."""
        return ids.JobID(self._core.job_id.to_bytes(4, "little"))

    @property
    def namespace(self) -> str | None:
        """The namespace of named actors created here."""
        return self._core.namespace

    @property
    def gcs_address(self) -> str:
        """The control store's address (``host:port``)."""
        return self._core.gcs_address

    def get_session_name(self) -> str:
        """The name of the cluster's session folder."""
        return os.path.basename(os.path.normpath(self._core.session_dir))

    def get_temp_dir(self) -> str:
        """The folder under which skate keeps its session folders (``SKATE_TEMP_DIR``)."""
        return CONFIG.temp_dir

    # --- node and worker --------------------------------------------------------------------
    def get_node_id(self) -> str:
        """The id (hex) of the node this process runs on."""
        return self._core.node_id.hex()

    @property
    def node_id(self) -> ids.NodeID:
        """The node's id (deprecated in Ray: use ``get_node_id()``)."""
        return ids.NodeID(self._core.node_id)

    def get_worker_id(self) -> str:
        """This process's worker id (hex), for the driver too."""
        return self._core.worker_id.hex()

    @property
    def worker_id(self) -> ids.WorkerID:
        """This process's worker id."""
        return ids.WorkerID(self._core.worker_id)

    # --- task -----------------------------------------------------------------------------
    def get_task_id(self) -> str | None:
        """The running task's id (hex); None in the driver."""
        spec = self._spec()
        return spec["t"].hex() if spec is not None else None

    @property
    def task_id(self) -> ids.TaskID | None:
        """The running task's id (deprecated in Ray: use ``get_task_id()``)."""
        spec = self._spec()
        return ids.TaskID(spec["t"]) if spec is not None else None

    def get_task_name(self) -> str | None:
        """The running task's name: its ``name`` option, else ``f`` for a task
        and ``Class.method`` for an actor call; None in the driver."""
        spec = self._spec()
        if spec is None:
            return None
        if "m" in spec:
            return spec.get("cn") or f"{self._core.executor.actor_name}.{spec['m']}"
        if "aid" in spec:  # the actor's constructor: "name:Class.__init__" when named, like Ray
            return f"{spec['an']}:{spec['n']}.__init__" if spec.get("an") else f"{spec['n']}.__init__"
        return spec["n"]

    def get_task_function_name(self) -> str | None:
        """The running function's full name, ``module.function`` (``module.Class.method``
        for an actor call), with a script's module named after its file like Ray;
        None in the driver."""
        spec = self._spec()
        if spec is None:
            return None
        ex = self._core.executor
        if "m" in spec or "aid" in spec:
            method = spec.get("m", "__init__")
            if ex.actor is None:  # the actor's constructor is running
                return f"{spec['n']}.{method}"
            cls = type(ex.actor)
            return f"{_module_of(getattr(cls, method, cls))}.{cls.__name__}.{method}"
        fn = ex.functions.get(spec["f"])
        if fn is None:
            return spec["n"]
        return f"{_module_of(fn)}.{getattr(fn, '__name__', spec['n'])}"

    def is_canceled(self) -> bool:
        """Whether ``cancel`` was called on the running task (follows Ray).

        Raises:
            RuntimeError: in the driver, or in an async actor (like Ray).
        """
        spec = self._spec()
        ex = self._core.executor
        if ex is None:
            raise RuntimeError("This method is only available when the process is a worker.")
        if ex.actor_loop is not None:
            raise RuntimeError("This method is not supported in an async actor.")
        return spec is not None and spec["t"] in ex.cancelled

    def get_assigned_resources(self) -> dict:
        """The resources reserved for the running task, or for the actor (follows Ray:
        ``{"CPU": 1.0}`` for a default task, ``{}`` for a default actor; fractions and
        custom resources as requested).

        Raises:
            AssertionError: in the driver (like Ray).
        """
        assert self._in_worker(), "This method is only available when the process is a worker."
        spec = self._spec()
        if spec is not None and "m" not in spec:
            return dict(spec.get("res", _DEFAULT_TASK_RESOURCES))
        actor = self._actor_spec()
        return dict(actor.get("res", {})) if actor is not None else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerator ids visible to this worker: ``{"GPU": [...]}`` from
        ``CUDA_VISIBLE_DEVICES`` (skate does not assign GPU ids itself yet)."""
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        return {"GPU": [x for x in vis.split(",") if x] if vis else []}

    def get_resource_ids(self) -> dict[str, list[str]]:
        """Old name of ``get_accelerator_ids`` (deprecated in Ray)."""
        return self.get_accelerator_ids()

    # --- actor ----------------------------------------------------------------------------
    def get_actor_id(self) -> str | None:
        """The current actor's id (hex), or None outside an actor."""
        ex = self._core.executor
        aid = ex.actor_id if ex is not None else None
        return aid.hex() if aid else None

    @property
    def actor_id(self) -> ids.ActorID | None:
        """The current actor's id (deprecated in Ray: use ``get_actor_id()``)."""
        ex = self._core.executor
        return ids.ActorID(ex.actor_id) if ex is not None and ex.actor_id else None

    def get_actor_name(self) -> str | None:
        """The current actor's name (``""`` when it has none); None outside an actor."""
        actor = self._actor_spec()
        if actor is None:
            return None
        return actor.get("an") or ""

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in.

        Raises:
            RuntimeError: outside an actor.
        """
        from skate.actor import ActorHandle, method_meta

        ex = self._core.executor
        if ex is None or not ex.actor_id or ex.actor is None:
            raise RuntimeError("This method is only available in an actor.")
        cls = type(ex.actor)
        return ActorHandle(ex.actor_id, cls.__name__, method_meta(cls))

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor is a restarted incarnation (its constructor ran again after a failure)."""
        ex = self._core.executor
        return bool(ex is not None and getattr(ex, "reconstructed", False))

    # --- placement groups and runtime environments ------------------------------------------
    def get_placement_group_id(self) -> str | None:
        """The hex id of the placement group the running task or actor uses, or None."""
        from skate._private import placement

        here = placement.current()
        return here[0].hex() if here else None

    @property
    def current_placement_group_id(self) -> Any:
        """The ``PlacementGroupID`` of the running task's or actor's group, or None."""
        from skate._private import placement
        from skate._private.ids import PlacementGroupID

        here = placement.current()
        return PlacementGroupID(here[0]) if here else None

    @property
    def should_capture_child_tasks_in_placement_group(self) -> bool:
        """Whether tasks and actors started here run in the current placement group by default."""
        from skate._private import placement

        here = placement.current()
        return bool(here and here[2])

    def get_runtime_env_string(self) -> str:
        """The runtime environment as JSON (see ``runtime_env``)."""
        return json.dumps(self._core.runtime_env, sort_keys=True)

    @property
    def runtime_env(self) -> Any:
        """The runtime environment this code runs in, a ``RuntimeEnv`` (follows Ray):
        in a driver the job's, in a worker the one it was started with (merged
        with the job's); ``working_dir`` and ``py_modules`` appear as the
        ``gcs://_skate_pkg_<hash>.zip`` packages they were uploaded as."""
        from skate.runtime_env import RuntimeEnv

        return RuntimeEnv(_validate=False, **self._core.runtime_env)

    # --- all of it ------------------------------------------------------------------------
    def get(self) -> dict:
        """The context as a dict (deprecated in Ray): job, node and namespace, and in a
        worker the task and actor ids when there are some."""
        out: dict = {"job_id": self.job_id, "node_id": self.node_id, "namespace": self.namespace}
        if self._in_worker():
            if self.task_id is not None:
                out["task_id"] = self.task_id
            if self.actor_id is not None:
                out["actor_id"] = self.actor_id
        return out

    def __getitem__(self, key: str) -> Any:
        return self.get()[key]


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this driver or worker (connects a local cluster first if
    none, like the rest of the API)."""
    from skate._private import runtime

    return RuntimeContext(runtime.current())
