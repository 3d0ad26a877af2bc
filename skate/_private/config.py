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
    #: Refuse messages carrying fields their declared type does not have
    #: (the test suite turns it on; it decodes every message twice).
    strict_messages: int = 0

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
