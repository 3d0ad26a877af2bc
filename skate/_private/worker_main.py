"""Entry point of a worker process (started by its node daemon)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys


def main() -> None:
    """Connects to the node daemon, registers, and runs pushed work until told to stop."""
    from skate._private import proctitle

    proctitle.set_title("IDLE")
    from skate._private import private_paths, runtime
    from skate._private.core_worker import start_worker
    from skate._private.core_worker.executor import OutputPrefixer

    env = os.environ
    core = start_worker(
        env["SKATE_RAYLET_SOCKET"],
        private_paths.read_token(env["SKATE_TOKEN_FILE"]),
        env["SKATE_SESSION_DIR"],
        worker_id=bytes.fromhex(env["SKATE_WORKER_ID"]),
    )
    executor = core.executor
    from skate._private.runtime_env import worker_setup
    from skate._private.runtime_env.submit import worker_env_of

    core.runtime_env = worker_env_of(env)
    runtime.set_current(core)
    worker_setup.run_hook()  # the runtime_env's worker_process_setup_hook: before any work
    sys.stdout = OutputPrefixer(sys.stdout, core)
    sys.stderr = OutputPrefixer(sys.stderr, core)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # The execution endpoint is served on this (main) thread, where user code runs.
    from skate._private import hostaddr, wire

    # asyncio's own loop here: with two uvloop loops in one (forked) worker, one
    # was seen closing a listening socket of the other when a peer failed the
    # handshake.
    loop = wire.SpinningLoop(on_sleep=proctitle.settle)
    asyncio.set_event_loop(loop)
    executor.exec_loop = loop
    read_on = wire.ReadOn(loop, executor)  # a caller's next request, read where it ran the last
    exec_uds = os.path.join(core.session_dir, f"x-{core.worker_id.hex()[:16]}.sock")
    loop.run_until_complete(
        wire.serve_unix(exec_uds, core.token, executor.exec_handlers(), identity=core.worker_id, read_on=read_on)
    )
    tcp = loop.run_until_complete(hostaddr.serve_in_range(
        lambda port: wire.serve_tcp(
            core.node_ip, port, core.token, executor.exec_handlers(), identity=core.worker_id, read_on=read_on
        ),
        hostaddr.worker_port_range(),
    ))
    core.address = [*core.address, tcp.sockets[0].getsockname()[1], exec_uds]
    core.extra_sockets.append(exec_uds)
    core.request(core.raylet, "register_worker", {"worker_id": core.worker_id, "address": core.address})
    try:
        loop.run_forever()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
