"""The public functions of skate (re-exported by ``skate/__init__.py``)."""

from __future__ import annotations

import atexit
import logging
import os
import uuid
from typing import Any

from skate._private import (
    cancellation,
    dashboard_launch,
    discovery,
    error_log,
    hostaddr,
    init_context,
    init_options,
    node,
    private_paths,
    runtime,
)
from skate._private.config import CONFIG
from skate._private.fetch_local import make_local
from skate.object_ref import ObjectRef

log = logging.getLogger(__name__)

_head: dict | None = None
#: The dashboard link of the cluster this process joined (None: none).
_dashboard_url: str | None = None


def is_initialized() -> bool:
    """True once ``init`` connected this process to a cluster."""
    return runtime.current_or_none() is not None


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict | None = None,
    labels: dict | None = None,
    object_store_memory: int | None = None,
    local_mode: bool = False,
    ignore_reinit_error: bool = False,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    job_config: Any = None,
    configure_logging: bool = True,
    logging_level: int | str = "info",
    logging_format: str | None = None,
    logging_config: Any = None,
    log_to_driver: bool | None = None,
    namespace: str | None = None,
    runtime_env: dict | None = None,
    enable_resource_isolation: bool = False,
    cgroup_path: str | None = None,
    system_reserved_cpu: float | None = None,
    system_reserved_memory: int | None = None,
    proxy_server_url: str | None = None,
    **kwargs: Any,
) -> Any:
    """Starts a local cluster, or connects to one at ``address`` (follows Ray's ``ray.init``).

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
        ignore_reinit_error: Return quietly when already initialized.
        configure_logging: Set up the ``skate`` logger (level ``logging_level``,
            format ``logging_format``) on stderr.
        logging_level: A ``logging`` level, as a number or a name (``"info"``).
        logging_format: A ``logging.Formatter`` format string.
        log_to_driver: Print worker output on this process's stdout/stderr
            (default True).
        namespace: Namespace for named actors (default: a fresh one per job).
        runtime_env: The job's runtime environment (``env_vars``, ``working_dir``,
            ``py_modules``, ``excludes``, ``config``; see the README): every task
            and actor of the job runs in it, merged with their own like Ray.
            Local folders are packed and uploaded here.
        kwargs: ``redis_address`` (old name of ``address``); skate's own
            ``_memory`` (memory resource of the local node, bytes) and
            ``_token`` (the cluster token, hex); and, only at values that
            change nothing, the old keywords of early Ray releases.

    The other keywords exist for Ray programs: given a value that asks for
    something skate does not do (node labels, ``local_mode``, resource
    isolation, ...), ``init`` raises
    ``NotImplementedError`` naming it rather than ignoring it.

    Returns:
        A ``RayContext`` (follows Ray's): ``dashboard_url`` (the dashboard
        link, with its credential; None without a dashboard),
        ``address_info``, and the driver's runtime context's accessors;
        ``with skate.init(): ...`` shuts down at the end of the block.

    Dashboard (follows Ray's defaults): ``include_dashboard=None`` starts one
    with a new cluster when ``skate[dashboard]`` is installed; it listens on
    ``dashboard_host`` (127.0.0.1) port ``dashboard_port`` (default 8265, or
    any free port when that one is taken).  The link is logged at INFO.

    Raises:
        RuntimeError: when already initialized (unless ``ignore_reinit_error``).
        ConnectionError: when the cluster cannot be reached or rejects the
            token, or ``address="auto"`` and no cluster runs on this machine.
        ValueError: a malformed address, or node resources given while
            joining an existing cluster.
        UnsafePathError: (a RuntimeError) when skate's temp folder, a cluster
            record or a token file could be changed by another local user.
        NotImplementedError: for a keyword value skate does not honour (and a
            runtime_env field such as ``pip``).
        TypeError: for an unknown keyword.
        RuntimeEnvSetupError: the runtime_env's local paths could not be packed.
    """
    address, memory, token_hex = init_options.check(
        address,
        {
            "labels": labels, "local_mode": local_mode, "job_config": job_config,
            "logging_config": logging_config,
            "enable_resource_isolation": enable_resource_isolation, "cgroup_path": cgroup_path,
            "system_reserved_cpu": system_reserved_cpu, "system_reserved_memory": system_reserved_memory,
            "proxy_server_url": proxy_server_url,
        },
        kwargs,
    )
    if runtime_env:
        from skate._private.runtime_env import spec as renv_spec

        runtime_env = renv_spec.validate(runtime_env)
    if configure_logging:
        init_options.configure_logging(logging_level, logging_format)
    if log_to_driver is None:
        log_to_driver = True
    global _head, _dashboard_url
    if is_initialized():
        if ignore_reinit_error:
            return init_context.RayContext(runtime.current(), _dashboard_url, shutdown)
        raise RuntimeError("skate.init() was already called; call shutdown() first, or pass ignore_reinit_error=True")
    address = discovery.resolve_address(address)
    if address is not None:
        init_options.check_dashboard_join(include_dashboard, dashboard_host, dashboard_port)
    listener = None
    if address is None and dashboard_launch.want(include_dashboard, "init(include_dashboard=True)"):
        listener = dashboard_launch.bind(dashboard_host, dashboard_port)

    def load_runtime() -> None:
        # Imported while the daemons boot, on the other core.
        import skate._private.core_worker  # noqa: F401

    if address is None:
        if num_cpus is not None and num_cpus < 0:
            raise ValueError("num_cpus must be non-negative")
        try:
            _head = node.start_head(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                object_store_memory=object_store_memory,
                memory=memory,
                while_starting=load_runtime,
            )
        except BaseException:
            if listener is not None:
                listener.close()
            raise
        token = _head["token"]
        session_dir = _head["session_dir"]
        raylet_addr = _head["raylet"]["uds"]
        if listener is not None:  # its process starts when a client first connects
            lazy = dashboard_launch.LazyDashboard(_head, listener)
            _head["dashboard"], _head["dashboard_launch"] = lazy.address, lazy
    else:
        if num_cpus is not None or num_gpus is not None or resources is not None or object_store_memory is not None or memory is not None:
            raise ValueError(
                "num_cpus, num_gpus, resources, object_store_memory and _memory describe a node; when "
                "connecting to an existing cluster, give them to `skate start` instead"
            )
        token, session_dir, raylet_addr = _find_cluster(address, token_hex)
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
        core.job_id = core.gcs_call("new_job", {"driver_pid": os.getpid(), "namespace": core.namespace,
                                              "address": core.address})
        # Node deaths: tasks on a node that is cut off are retried elsewhere.
        core.gcs_call("subscribe", ["logs", "node"] if log_to_driver else ["node"])
        if runtime_env or os.environ.get("SKATE_JOB_RUNTIME_ENV"):  # the job's: packed and uploaded now, like Ray
            from skate._private.runtime_env import submit as renv_submit

            renv_submit.set_job_env(core, runtime_env)
    except Exception:
        shutdown()
        raise
    atexit.register(shutdown)
    ctx = init_context.announce(core, token, _head, shutdown)
    _dashboard_url = ctx.dashboard_url
    return ctx


def _find_cluster(address: str, token_hex: str | None) -> tuple[bytes, str, Any]:
    target = discovery.credentials(address, token_hex)
    all_nodes = discovery.request_gcs(target, "get_nodes")
    alive = [n for n in all_nodes if n["alive"]]
    if not alive:
        raise ConnectionError(f"the cluster at {target.gcs_address} has no live node")
    # This host's node daemon when it has one (its address is bindable here:
    # a socket path seen on a shared file system is not enough), preferring
    # the one on the address that routes to the control store; otherwise
    # the head's, over TCP (a driver on a host outside the cluster).
    mine = hostaddr.route_ip(target.gcs_address.rpartition(":")[0])
    local = [n for n in alive if hostaddr.is_local(n["ip"]) and os.path.exists(n["uds"])]
    pick = sorted(local or alive, key=lambda n: (n["ip"] != mine, not n.get("is_head")))[0]
    addr = hostaddr.local_target(pick["uds"], pick["ip"], pick["port"])
    return target.token, target.session_dir or _own_session_dir(), addr


def _own_session_dir() -> str:
    private_paths.private_dir(CONFIG.temp_dir)
    return private_paths.private_dir(os.path.join(CONFIG.temp_dir, f"driver_{os.getpid()}"))


def shutdown(*, wait_for_processes: bool = False, _exiting_interpreter: bool = False) -> None:
    """Disconnects this process; stops the cluster if ``init`` started it here.

    The processes ``init`` started are always waited for (SIGTERM, then
    SIGKILL after a grace period), so ``wait_for_processes`` changes nothing.
    """
    core = runtime.current_or_none()
    if core is not None:
        runtime.set_current(None)
        core.shutdown()
    _stop_head()
    error_log.clear()


def _stop_head() -> None:
    global _head
    head, _head = _head, None
    if head is None:
        return
    lazy = head.get("dashboard_launch")
    if lazy is not None:
        lazy.close()
    node.stop_processes(head["processes"])
    node.forget_cluster(head["gcs_address"])
    node.remove_session(head["session_dir"])


def _core() -> Any:
    return runtime.current()


def put(value: Any, *, _owner: Any = None, _tensor_transport: str | None = None) -> Any:
    """Stores ``value`` in the object store; returns an ObjectRef to it.

    Raises:
        TypeError: ``value`` is an ObjectRef (like Ray), or cannot be serialized.
        NotImplementedError: for ``_owner`` (another owner) or a tensor transport.
    """
    if isinstance(value, ObjectRef):
        raise TypeError("Calling 'put' on an ray.ObjectRef is not allowed. If you really want to do this, you can wrap the ray.ObjectRef in a list and call 'put' on it.")
    if _owner is not None:
        raise NotImplementedError("skate does not support put(_owner=...) yet: the calling process always owns what it puts.")
    if _tensor_transport is not None and str(_tensor_transport).lower() != "object_store":
        raise NotImplementedError(f"skate does not support put(_tensor_transport={_tensor_transport!r}) yet: tensor transports are not implemented.")
    return _core().put(value)


def get(object_refs: Any, *, timeout: float | None = None, _use_object_store: bool = False) -> Any:
    """Waits for and returns the value(s) of one ObjectRef or a list of them.

    ``_use_object_store`` only matters for compiled graphs in Ray; here every
    value comes through the object store already.

    Raises:
        GetTimeoutError: if ``timeout`` seconds pass first.
        RayTaskError: (as the task's own exception class too) if the task raised.
        ValueError: ``object_refs`` is not an ObjectRef or a list of them, or a
            negative ``timeout``.
    """
    cls = type(object_refs)
    if cls is list:
        first = type(object_refs[0]) if object_refs else ObjectRef
        cgraph = first is not ObjectRef and getattr(first, "_skate_cgraph_ref", False)
    else:
        cgraph = cls is not ObjectRef and getattr(cls, "_skate_cgraph_ref", False)
    if cgraph:  # compiled-graph results (skate.dag)
        from skate.dag.compiled_dag_ref import get_compiled

        return get_compiled(object_refs, timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number or None")
    return _core().get(object_refs, timeout)


def wait(ray_waitables: list, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True) -> tuple[list, list]:
    """Returns ``(ready, not_ready)`` once ``num_returns`` refs are ready or ``timeout`` passes.

    Follows Ray: ready refs keep the order they had in ``ray_waitables``;
    ``wait([])`` returns ``([], [])``.  With ``fetch_local`` (the default) a
    ready value held in shared memory on another node is copied to this node
    before ``wait`` returns; with ``fetch_local=False`` it is ready as soon as
    it exists anywhere.

    Raises:
        TypeError: not a list of ObjectRefs.
        ValueError: repeated refs, ``num_returns`` out of range, negative timeout.
    """
    if isinstance(ray_waitables, (list, tuple)) and not ray_waitables:
        return [], []
    if not isinstance(num_returns, int) or isinstance(num_returns, bool):
        raise TypeError(f"num_returns must be an int, not {type(num_returns).__name__}")
    core = _core()
    ready, not_ready = core.wait(ray_waitables, num_returns, timeout, fetch_local)
    if fetch_local and ready:
        make_local(core, ready)
    return ready, not_ready


def cancel(ray_waitable: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task that makes ``ray_waitable``; ``get`` then raises TaskCancelledError.

    Follows Ray: a queued task never runs; a running one gets
    ``KeyboardInterrupt`` (``force=True``: its worker exits, and ``get`` raises
    ``WorkerCrashedError``).  With ``recursive`` (the default) the tasks it
    submitted that are still pending or running are cancelled too.

    Raises:
        TypeError: not an ObjectRef.
        ValueError: ``force=True`` for an actor task, or a ref this process
            did not submit.
    """
    from skate._private.core_worker.streams import ObjectRefGenerator
    if isinstance(ray_waitable, ObjectRefGenerator):  # stops the generator task
        core = _core()
        core.post(cancellation.cancel_task, core, ray_waitable._st.rec, force, recursive)
        return
    if not isinstance(ray_waitable, ObjectRef):
        raise TypeError(f"ray.cancel() only supported for object refs. For actors, try ray.kill(). Got: {type(ray_waitable)}.")
    core = _core()
    e = core.store.get(ray_waitable._id)
    if e is None:
        if core.store.borrowed.get(ray_waitable._id) is not None:
            raise ValueError("only the process that submitted a task can cancel it")
        return
    rec = e.task
    if rec is None:
        return
    if rec.actor is not None and force:
        raise ValueError("force=True is not supported for actor tasks")
    core.post(cancellation.cancel_task, core, rec, force, recursive)


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


def error_info() -> list[dict]:
    """The errors of failed tasks whose results nobody read (printed in the
    background when their last ref went away), oldest first, as dicts with
    ``type``, ``message``, ``error`` and ``timestamp``.  A name from early Ray
    releases, kept for old programs."""
    return error_log.entries()
