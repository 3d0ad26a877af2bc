"""The public functions of skate (re-exported by ``skate/__init__.py``)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import uuid
from typing import Any

from skate import exceptions as exc
from skate._private import node, rpc, runtime
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
        address: ``None`` starts an embedded cluster for this process;
            ``"auto"`` joins the cluster last started on this machine;
            ``"host:port"`` joins the cluster whose control store listens there.
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
        ConnectionError: when the cluster cannot be reached or rejects the token.
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
    if address is None:
        address = os.environ.get("SKATE_ADDRESS") or None
    if is_initialized():
        if ignore_reinit_error:
            return get_runtime_context()
        raise RuntimeError("skate.init() was already called; call shutdown() first, or pass ignore_reinit_error=True")
    def load_runtime() -> None:
        # Imported while the daemons boot, on the other core.
        import skate._private.core_worker.actors  # noqa: F401
        import skate._private.core_worker.core  # noqa: F401
        import skate._private.core_worker.submitter  # noqa: F401

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
    from skate._private.core_worker.core import DRIVER, CoreWorker

    try:
        core = CoreWorker(
            DRIVER,
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
    rec = node.lookup_cluster(address)
    if address == "auto" and rec is None:
        raise ConnectionError("address='auto' but no running skate cluster was found on this machine")
    gcs_address = rec["gcs_address"] if rec else address
    token_hex = token_hex or os.environ.get("SKATE_CLUSTER_TOKEN")
    if token_hex:
        token = token_hex.encode()
    elif rec:
        with open(rec["token_file"], "rb") as f:
            token = f.read().strip()
    else:
        raise ConnectionError(
            f"no token for the cluster at {address}: set SKATE_CLUSTER_TOKEN (printed by `skate start --head`)"
        )
    session_dir = rec["session_dir"] if rec else _own_session_dir()
    import asyncio

    async def nodes() -> list:
        conn = await rpc.connect(gcs_address, token, {})
        try:
            return await conn.request("get_nodes")
        finally:
            conn.close()

    try:
        all_nodes = asyncio.run(nodes())
    except rpc.P.AuthError as e:
        raise ConnectionError(f"the cluster at {gcs_address} rejected this process: {e}") from None
    except OSError as e:
        raise ConnectionError(f"cannot reach a skate cluster at {gcs_address}: {e}") from None
    alive = [n for n in all_nodes if n["alive"]]
    if not alive:
        raise ConnectionError(f"the cluster at {gcs_address} has no live node")
    local = [n for n in alive if os.path.exists(n["uds"])]
    pick = sorted(local or alive, key=lambda n: not n.get("is_head"))[0]
    addr = pick["uds"] if os.path.exists(pick["uds"]) else (pick["ip"], pick["port"])
    return token, session_dir, addr


def _own_session_dir() -> str:
    d = os.path.join(CONFIG.temp_dir, f"driver_{os.getpid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


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
    cls = type(object_refs)
    if getattr(cls, "_skate_cgraph_ref", False) or (
        cls is list and object_refs and getattr(type(object_refs[0]), "_skate_cgraph_ref", False)
    ):  # compiled-graph results (skate.dag)
        from skate.dag.compiled_dag_ref import get_compiled

        return get_compiled(object_refs, timeout)
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


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the named actor ``name`` in ``namespace`` (default: this job's)."""
    import cloudpickle

    from skate.actor import ActorHandle

    if not name:
        raise ValueError("get_actor() needs a non-empty name")
    core = _core()
    ns = namespace or core.namespace
    reply = core.gcs_call("get_named_actor", {"name": name, "namespace": ns})
    info, bufs = reply if isinstance(reply, tuple) else (reply, [])
    if info is None or info.get("state") == "DEAD":
        raise ValueError(f"Failed to look up actor {name!r} in namespace {ns!r}: no live actor has that name")
    class_name, meta = cloudpickle.loads(bufs[0])
    return ActorHandle(info["actor_id"], class_name, meta)


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
                "Labels": {},
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
