"""Several nodes on one machine, each a separate node-daemon process (for tests).

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2, resources={"gpu_box": 1})
    skate.init(address=cluster.address)
    ...
    cluster.remove_node(worker)
    cluster.shutdown()
"""

from __future__ import annotations

import time
from typing import Any

from skate._private import dashboard_launch, wire
from skate._private import node as _node


class NodeHandle:
    """One node daemon started by a Cluster."""

    def __init__(self, proc: _node.DaemonProcess, head: bool) -> None:
        self._proc = proc
        self.head = head
        self.node_id = proc.info["node_id"]
        self.unique_id = self.node_id

    @property
    def pid(self) -> int:
        """The node daemon's process id."""
        return self._proc.proc.pid

    def kill(self) -> None:
        """SIGKILLs the node daemon (a crash, not a clean stop)."""
        self._proc.proc.kill()
        self._proc.proc.wait()

    def __repr__(self) -> str:
        return f"NodeHandle({self.node_id[:12]}, head={self.head})"


class Cluster:
    """A head (control store + node daemon) and extra node daemons on this machine."""

    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        self.head_node: NodeHandle | None = None
        self.worker_nodes: list[NodeHandle] = []
        self._info: dict | None = None
        self._gcs: Any = None
        self._dashboard: _node.DaemonProcess | None = None
        #: The dashboard link (with its credential) when the head has a dashboard.
        self.dashboard_url: str | None = None
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                import skate

                skate.init(address=self.address)

    @property
    def address(self) -> str:
        """The control store's ``host:port``, for ``init(address=...)``."""
        if self._info is None:
            raise RuntimeError("the cluster has no head node yet; call add_node() first")
        return self._info["gcs_address"]

    @property
    def gcs_address(self) -> str:
        return self.address

    def add_node(
        self,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict | None = None,
        object_store_memory: int | None = None,
        wait: bool = True,
        gcs_storage: str | None = None,
        **kwargs: Any,
    ) -> NodeHandle:
        """Starts a node (the head, the first time) and waits until it is registered.

        ``labels`` (a keyword, worker nodes only): the node's labels, e.g. ``{"zone": "a"}``.

        ``gcs_storage`` (the head only): where the control store keeps its
        tables, e.g. ``redis://127.0.0.1:6379`` (default ``SKATE_GCS_STORAGE``,
        else in memory).  The head only, too: ``include_dashboard`` (default
        False: test clusters stay light), ``dashboard_host``, ``dashboard_port``;
        the link is then ``cluster.dashboard_url``.
        """
        store = object_store_memory or 256 * 1024 * 1024
        if gcs_storage is not None and self._info is not None:
            raise ValueError("gcs_storage applies to the head node (the first add_node) only")
        dashboard = {k: kwargs.pop(k) for k in ("include_dashboard", "dashboard_host", "dashboard_port") if k in kwargs}
        if dashboard and self._info is not None:
            raise ValueError("include_dashboard, dashboard_host and dashboard_port apply to the head node only")
        if self._info is None:
            listener = None
            if dashboard.get("include_dashboard"):
                dashboard_launch.want(True, "Cluster(include_dashboard=True)")
                listener = dashboard_launch.bind(dashboard.get("dashboard_host"), dashboard.get("dashboard_port"))
            # Like Ray's Cluster, its head is what init() / init("auto") join by default.
            self._info = _node.start_head(num_cpus, num_gpus, resources, store, discoverable=True, storage=gcs_storage)
            if listener is not None:
                self._dashboard, where = dashboard_launch.start(self._info, listener)
                self.dashboard_url = dashboard_launch.link(where, self._info["token"])
                dashboard_launch.announce(self._info["gcs_address"], self._info["token"], where,
                                          self._info["session_dir"])
            self._gcs_storage_url = gcs_storage
            gcs, raylet = self._info["processes"]
            raylet.info = self._info["raylet"]
            self._gcs_proc = gcs
            self.head_node = NodeHandle(raylet, head=True)
            return self.head_node
        proc = _node.start_worker_node(
            self.address,
            self._info["token_file"],
            self._info["session_dir"],
            num_cpus,
            num_gpus,
            resources,
            store,
            labels=kwargs.get("labels"),
        )
        handle = NodeHandle(proc, head=False)
        self.worker_nodes.append(handle)
        if wait:
            self._wait(lambda nodes: any(n["node_id"].hex() == handle.node_id and n["alive"] for n in nodes))
        return handle

    def remove_node(self, node: NodeHandle, allow_graceful: bool = True) -> None:
        """Stops a node daemon (gracefully, or SIGKILL with ``allow_graceful=False``)."""
        if allow_graceful:
            _node.stop_processes([node._proc])
        else:
            node.kill()
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)
        if node is self.head_node:
            self.head_node = None
        else:
            self._wait(lambda nodes: all(n["node_id"].hex() != node.node_id or not n["alive"] for n in nodes))

    def list_all_nodes(self) -> list[NodeHandle]:
        """The head and the other nodes."""
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Waits until the control store sees every started node alive."""
        want = {n.node_id for n in self.list_all_nodes()}
        self._wait(lambda nodes: want <= {n["node_id"].hex() for n in nodes if n["alive"]}, timeout)

    def _nodes(self) -> list:
        import asyncio

        async def go() -> list:
            conn = await wire.connect(self.address, self._info["token"], {}, expect=wire.GCS_IDENTITY)
            try:
                return await conn.request("get_nodes")
            finally:
                conn.close()

        return asyncio.run(go())

    def _wait(self, cond: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if cond(self._nodes()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("nodes did not reach the expected state in time")
            time.sleep(0.02)

    def shutdown(self) -> None:
        """Stops every node and the control store."""
        import skate

        if skate.is_initialized():
            skate.shutdown()
        procs = [n._proc for n in self.worker_nodes]
        if self.head_node is not None:
            procs.append(self.head_node._proc)
        _node.stop_processes(procs)
        if self._dashboard is not None:
            _node.stop_processes([self._dashboard])
            self._dashboard = None
        if self._info is not None:
            _node.stop_processes([self._gcs_proc])
            _node.forget_cluster(self._info["gcs_address"])
            _node.remove_session(self._info["session_dir"])  # (sweeps nodes removed with SIGKILL)
        self.worker_nodes = []
        self.head_node = None
        self._info = None
