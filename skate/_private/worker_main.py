"""Entry point of a worker process (started by its node daemon)."""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    """Connects to the node daemon, registers, and runs pushed work until told to stop."""
    from skate._private import runtime
    from skate._private.core_worker.core import WORKER, CoreWorker
    from skate._private.core_worker.executor import Executor, OutputPrefixer

    env = os.environ
    core = CoreWorker(
        WORKER,
        env["SKATE_RAYLET_SOCKET"],
        env["SKATE_TOKEN"].encode(),
        env["SKATE_SESSION_DIR"],
        worker_id=bytes.fromhex(env["SKATE_WORKER_ID"]),
    )
    executor = Executor(core)
    core.executor = executor
    core.handlers.update(executor.handlers())
    runtime.set_current(core)
    sys.stdout = OutputPrefixer(sys.stdout, core)
    sys.stderr = OutputPrefixer(sys.stderr, core)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    core.request(core.raylet, "register_worker", {"worker_id": core.worker_id, "address": core.address})
    try:
        executor.run()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
