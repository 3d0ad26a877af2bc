"""The public functions of skate (re-exported by ``skate/__init__.py``)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import uuid
from typing import Any

from skate import exceptions as exc
from skate._private import discovery, node, private_paths, runtime, wire
from skate._private.config import CONFIG

log = logging.getLogger(__name__)

_head: dict | None = None


def is_initialized() -> bool:
    """True once ``init`` connected this process to a cluster."""
    return runtime.current_or_none() is not None


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    runtime_env: dict | None = None,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    logging_level: int = logging.INFO,
    configure_logging: bool = True,
    redis_address: str | None = None,
    _token: str | None = None,
    _memory: float | None = None,
    **kwargs: Any,
) -> Any:
    """Starts a local cluster, or connects to one at ``address``.

    Args:
        address: Like Ray's: ``None`` joins the cluster named by
            ``SKATE_ADDRESS``/``RAY_ADDRESS``, else the latest ``skate start``
            cluster on this machine whose head is alive, else starts an
            embedded cluster for this process; ``"auto"`` does the same but
            raises ConnectionError instead of starting one; ``"local"``
            always starts one; ``"host:port"`` joins the cluster whose control
            store listens there.
        num_cpus: CPUs of the local node (default: all cores).
        num_gpus: GPUs of the local node.
        resources: Custom resources of the local node, e.g. ``{"disk": 2}``.
        object_store_memory: Bytes of shared memory for large objects.
        namespace: Namespace for named actors (default: a fresh one per job).
        ignore_reinit_error: Return quietly when already initialized.
        log_to_driver: Print worker output on this process's stdout/stderr.
        redis_address: Old name of ``address``.

    Returns:
        The runtime context of the driver.

    Raises:
        RuntimeError: when already initialized (unless ``ignore_reinit_error``).
        ConnectionError: when the cluster cannot be reached or rejects the
            token, or ``address="auto"`` and no cluster runs on this machine.
        ValueError: a malformed address, or node resources given while
            joining an existing cluster.
        UnsafePathError: (a RuntimeError) when skate's temp folder, a cluster
            record or a token file could be changed by another local user.
    """
    global _head
    unknown = set(kwargs) - {"_system_config", "_temp_dir", "num_redis_shards", "redis_max_clients",
                             "plasma_directory", "huge_pages", "include_webui", "object_id_seed",
                             "node_ip_address", "local_mode", "_node_ip_address", "_plasma_directory",
                             "storage", "job_config", "log_to_file", "_enable_object_reconstruction"}
    if unknown:
        raise TypeError(f"init() got unexpected keyword arguments: {sorted(unknown)}")
    if address is None and redis_address is not None:
        address = redis_address
    if is_initialized():
        if ignore_reinit_error:
            return get_runtime_context()
        raise RuntimeError("skate.init() was already called; call shutdown() first, or pass ignore_reinit_error=True")
    address = discovery.resolve_address(address)
    def load_runtime() -> None:
        # Imported while the daemons boot, on the other core.
        import skate._private.core_worker  # noqa: F401

    if address is None:
        if num_cpus is not None and num_cpus < 0:
            raise ValueError("num_cpus must be non-negative")
        _head = node.start_head(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=resources,
            object_store_memory=object_store_memory,
            memory=_memory,
            while_starting=load_runtime,
        )
        token = _head["token"]
        session_dir = _head["session_dir"]
        raylet_addr = _head["raylet"]["uds"]
    else:
        if num_cpus is not None or num_gpus is not None or resources is not None:
            raise ValueError(
                "num_cpus, num_gpus and resources describe a node; when connecting to an "
                "existing cluster, give them to `skate start` instead"
            )
        token, session_dir, raylet_addr = _find_cluster(address, _token)
    from skate._private.core_worker import start_driver

    try:
        core = start_driver(
            raylet_addr,
            token,
            session_dir,
            namespace=namespace or str(uuid.uuid4()),
            log_to_driver=log_to_driver,
        )
    except Exception:
        _stop_head()
        raise
    runtime.set_current(core)
    try:
        core.job_id = core.gcs_call("new_job", {"driver_pid": os.getpid(), "namespace": core.namespace})
        if log_to_driver:
            core.gcs_call("subscribe", ["logs"])
    except Exception:
        shutdown()
        raise
    atexit.register(shutdown)
    return get_runtime_context()


def _find_cluster(address: str, token_hex: str | None) -> tuple[bytes, str, Any]:
    target = discovery.credentials(address, token_hex)
    all_nodes = discovery.request(target.gcs_address, target.token, "get_nodes", expect=wire.GCS_IDENTITY)
    alive = [n for n in all_nodes if n["alive"]]
    if not alive:
        raise ConnectionError(f"the cluster at {target.gcs_address} has no live node")
    local = [n for n in alive if os.path.exists(n["uds"])]
    pick = sorted(local or alive, key=lambda n: not n.get("is_head"))[0]
    addr = pick["uds"] if os.path.exists(pick["uds"]) else (pick["ip"], pick["port"])
    return target.token, target.session_dir or _own_session_dir(), addr


def _own_session_dir() -> str:
    private_paths.private_dir(CONFIG.temp_dir)
    return private_paths.private_dir(os.path.join(CONFIG.temp_dir, f"driver_{os.getpid()}"))


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Disconnects this process; stops the cluster if ``init`` started it here."""
    core = runtime.current_or_none()
    if core is not None:
        runtime.set_current(None)
        core.shutdown()
    _stop_head()


def _stop_head() -> None:
    global _head
    head, _head = _head, None
    if head is None:
        return
    node.stop_processes(head["processes"])
    node.forget_cluster(head["gcs_address"])
    shutil.rmtree(head["session_dir"], ignore_errors=True)


def _core() -> Any:
    return runtime.current()


def put(value: Any, *, _owner: Any = None) -> Any:
    """Stores ``value`` in the object store; returns an ObjectRef to it."""
    return _core().put(value)


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """Waits for and returns the value(s) of one ObjectRef or a list of them.

    Raises:
        GetTimeoutError: if ``timeout`` seconds pass first.
        RayTaskError: (as the task's own exception class too) if the task raised.
    """
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be None or non-negative")
    return _core().get(object_refs, timeout)


def wait(object_refs: list, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True) -> tuple[list, list]:
    """Returns ``(ready, not_ready)`` once ``num_returns`` refs are ready or ``timeout`` passes.

    Ready refs keep the order they had in ``object_refs``.
    """
    return _core().wait(object_refs, num_returns, timeout, fetch_local)


def cancel(object_ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task that makes ``object_ref``; ``get`` then raises TaskCancelledError."""
    from skate.object_ref import ObjectRef

    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, not {type(object_ref).__name__}")
    core = _core()
    e = core.store.get(object_ref._id)
    if e is None:
        if core.store.borrowed.get(object_ref._id) is not None:
            raise ValueError("only the process that submitted a task can cancel it")
        return
    rec = e.task
    if rec is None:
        return
    if rec.actor is not None:
        if force:
            raise ValueError("force=True is not supported for actor tasks")
        core.post(_cancel_actor_task, core, rec)
        return
    core.post(core.submitter.cancel, rec, force)


def _cancel_actor_task(core: Any, rec: Any) -> None:
    st = rec.actor
    if rec in st.queue:
        st.queue.remove(rec)
        core.submitter.fail(rec, exc.TaskCancelledError(rec.spec["t"].hex()))
    elif st.info.get("address") and rec.spec["t"] in st.inflight:
        import asyncio

        from skate._private.core_worker.submitter import control_notify

        asyncio.ensure_future(control_notify(core, st.info["address"], "cancel_task", {"t": rec.spec["t"], "force": False}))


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kills an actor at once; its pending and future calls raise ActorDiedError."""
    from skate.actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise ValueError(f"kill() takes an actor handle, not {type(actor).__name__}")
    _core().actors.kill(actor._state, no_restart)


def nodes() -> list[dict]:
    """The cluster's nodes, in Ray's format."""
    out = []
    for n in _core().gcs_call("get_nodes"):
        out.append(
            {
                "NodeID": n["node_id"].hex(),
                "Alive": n["alive"],
                "alive": n["alive"],
                "NodeManagerAddress": n["ip"],
                "NodeManagerHostname": n["ip"],
                "NodeManagerPort": n["port"],
                "NodeName": n["ip"],
                "Resources": dict(n["resources"]) if n["alive"] else {},
                "IsHead": bool(n.get("is_head")),
                "Labels": dict(n.get("labels") or {}),
            }
        )
    return out


def _sum(key: str) -> dict:
    total: dict[str, float] = {}
    for n in _core().gcs_call("get_nodes"):
        if not n["alive"]:
            continue
        for k, v in n[key].items():
            total[k] = total.get(k, 0.0) + v
    return {k: v for k, v in total.items() if v > 0}


def cluster_resources() -> dict:
    """Total resources of the live nodes."""
    return _sum("resources")


def available_resources() -> dict:
    """Resources free right now on the live nodes."""
    return _sum("available")


def get_runtime_context() -> Any:
    """Ids of the current job, task, actor, node and worker."""
    from skate.runtime_context import RuntimeContext

    return RuntimeContext(_core())


def get_gpu_ids() -> list:
    """GPU ids assigned to the current worker (from CUDA_VISIBLE_DEVICES)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not vis:
        return []
    return [int(x) if x.isdigit() else x for x in vis.split(",") if x]


def timeline(filename: str | None = None) -> list:
    """Task events in Chrome trace format (not recorded yet: empty)."""
    return []
