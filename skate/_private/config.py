"""Typed configuration for every skate process.

Each field has a default and may be overridden with an environment variable
named ``SKATE_<FIELD NAME IN CAPITALS>``; child processes inherit the
environment, so one setting reaches the whole local cluster.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile


@dataclasses.dataclass
class Config:
    """Tunables shared by the driver, the daemons and the workers."""

    #: Values whose serialized size is below this travel inline in messages.
    max_inline_bytes: int = 100 * 1024
    #: Fraction of RAM used for the shared-memory store when not given.
    object_store_fraction: float = 0.3
    #: Seconds between liveness heartbeats of a node daemon whose free
    #: resources did not change (a change is reported sooner, see below).
    heartbeat_s: float = 1.0
    #: Seconds between a node daemon's checks for changed free resources
    #: (sent as a versioned delta, only when something changed), and between
    #: the control store's batched broadcasts of the changes to every node.
    resource_report_s: float = 0.1
    #: Missed heartbeat time after which a node is declared dead.
    node_timeout_s: float = 10.0
    #: Workers started with a node, on top of what demand starts.
    prestart_workers: int = 1  # -1: one per CPU (at most 4); forking more on demand takes milliseconds
    #: Idle task workers above the CPU count are stopped after this many seconds.
    idle_worker_s: float = 10.0
    #: Root of per-session folders (sockets, logs, spilled objects).
    temp_dir: str = os.path.join(tempfile.gettempdir(), f"skate-{os.getuid()}")
    #: Log folders (``<temp_dir>/logs/session_*``) of finished sessions kept;
    #: older ones are removed when a new session starts.
    logs_kept: int = 10
    #: First part of shared-memory segment names (/dev/shm/<prefix>-<node>-<object>).
    shm_prefix: str = "skate"
    #: Start daemons with ``python -S`` and this process's import path (faster start).
    daemon_skip_site: int = 1
    #: Default task retries on worker death.
    task_max_retries: int = 3
    #: Microseconds a thread waiting for a reply, or a worker's execution loop
    #: that just handled a message, polls before it sleeps (a wake-up from
    #: sleep costs tens of microseconds on virtual machines); 0 turns it off.
    spin_us: int = 100
    #: Seconds a peer has to prove it holds the cluster token before its
    #: connection is dropped.
    handshake_timeout_s: float = 5.0
    #: Connections a listener holds at once that have not authenticated
    #: yet; more are closed as soon as they are accepted.
    max_pending_handshakes: int = 64
    #: Tasks whose events (state, times, worker, error) the control store
    #: keeps for the state API and ``timeline()``; 0 turns recording off.
    task_events_max: int = 10000
    #: The largest payload of one frame a process accepts (bytes): a peer
    #: announcing more is dropped before anything is allocated for it.
    max_frame_bytes: int = 16 << 30
    #: Refuse messages carrying fields their declared type does not have
    #: (the test suite turns it on; it decodes every message twice).
    strict_messages: int = 0
    #: Where the control store keeps its tables: "" (in memory, lost when it
    #: dies) or ``redis://HOST:PORT`` (it survives restarts; the head then
    #: supervises it and starts a new one when it dies).
    gcs_storage: str = ""
    #: Seconds node daemons, workers and drivers keep retrying (with
    #: backoff) to reach a restarting control store with durable storage
    #: before they give up on it.
    gcs_reconnect_timeout_s: float = 60.0
    #: Restarts of a dying control store the head attempts within a minute
    #: before it gives up.
    gcs_max_restarts_per_minute: int = 10
    #: Dead actors, finished jobs and dead nodes the control store keeps
    #: records of (the oldest beyond these are purged).
    max_dead_actors: int = 10000
    max_finished_jobs: int = 1000
    max_dead_nodes: int = 1000
    #: Task records an owner keeps to rebuild lost shared-memory results
    #: (each pins the task's arguments while a result is referenced).
    max_lineage_entries: int = 10000
    #: Whether a new cluster (``init()``, ``skate start --head``) gets a
    #: dashboard when ``include_dashboard`` is not given: "" when
    #: ``skate[dashboard]`` is installed (Ray's default), "0" never, "1" always.
    include_dashboard: str = ""

    @classmethod
    def from_env(cls) -> Config:
        """Builds a config from defaults and ``SKATE_*`` environment variables."""
        cfg = cls()
        for field in dataclasses.fields(cls):
            raw = os.environ.get("SKATE_" + field.name.upper())
            if raw is None:
                continue
            kind = type(getattr(cfg, field.name))
            setattr(cfg, field.name, kind(raw))
        return cfg


CONFIG = Config.from_env()
