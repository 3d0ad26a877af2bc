"""The head's supervisor of its control store: starts a new one when it dies.

::

    supervisor (holds the listening socket)
        |  spawn gcs.server --listen-fd N    (dies with the supervisor)
        v
    control store --- dies (SIGKILL, crash) ---> spawned again on the same socket

The supervisor keeps the control store's listening socket open, so its
address never changes and clients that connect during the outage wait in
the socket's backlog instead of being refused.  It is used when the tables
live in durable storage (Redis): a new control store reads them back and
node daemons, workers and drivers reconnect to it.  More than
``CONFIG.gcs_max_restarts_per_minute`` deaths within a minute end the
supervisor (and so the cluster's control store).  Stopped on purpose
(SIGTERM), it stops the control store and deletes the cluster's tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from skate._private import daemon, logs, node
from skate._private.config import CONFIG

log = logging.getLogger(__name__)


def _spawn(server_args: list[str], log_path: str | None) -> node.DaemonProcess:
    # (log_path: unused; the control store logs where this supervisor does, SKATE_LOG_DIR)
    return node.spawn("control store", ["skate._private.gcs.server", *server_args], tie_to_parent=True,
                      logs_dir=os.environ.get(logs.ENV) or None, log_name="gcs",
                      pass_fds=(int(server_args[server_args.index("--listen-fd") + 1]),))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-path", default=None)
    ap.add_argument("server_args", nargs=argparse.REMAINDER, help="the control store's arguments")
    args = ap.parse_args()
    server_args = [a for a in args.server_args if a != "--"]
    logging.basicConfig(level=os.environ.get("SKATE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.die_with_parent()
    gcs = _spawn(server_args, args.log_path)
    try:
        info = node.wait_ready(gcs)
    except Exception as e:  # noqa: BLE001 - reported by our parent, which waits on us
        log.error("the control store did not start: %s", e)
        return 1
    daemon.report_ready(dict(info, supervisor_pid=os.getpid()))
    deaths: list[float] = []
    while not stopping:
        try:
            code = gcs.proc.wait(timeout=0.2)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running
            continue
        if stopping:
            break
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < 60] + [now]
        if len(deaths) > CONFIG.gcs_max_restarts_per_minute:
            log.error("the control store died %d times within a minute; giving up", len(deaths))
            return 1
        log.warning("the control store exited (code %s); starting a new one", code)
        gcs = _spawn(server_args, args.log_path)
        try:
            node.wait_ready(gcs)
        except Exception as e:  # noqa: BLE001 - counted as one more death
            log.error("the new control store did not start: %s", e)
    node.stop_processes([gcs])
    _drop_tables(server_args)
    return 0


def _drop_tables(server_args: list[str]) -> None:
    """A cluster stopped on purpose leaves nothing in its storage."""
    from skate._private import private_paths
    from skate._private.gcs.redis_storage import namespace_for
    from skate._private.gcs.storage import open_storage

    try:
        token = private_paths.read_token(server_args[server_args.index("--token-file") + 1])
        storage = open_storage(server_args[server_args.index("--storage") + 1], namespace_for(token))
        drop = getattr(storage, "drop_all", None)
        if drop is not None:
            drop()
    except Exception as e:  # noqa: BLE001 - best effort at exit
        log.warning("could not delete the control store's tables: %s", e)


if __name__ == "__main__":
    sys.exit(main())
