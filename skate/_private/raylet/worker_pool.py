"""Starting, tracking and reaping a node's worker processes.

Workers are started as ``python -m skate._private.worker_main`` with their
output on pipes; each line they print is handed to ``on_output`` (the node
daemon forwards it to drivers).  A worker reports in with ``register_worker``
over the node daemon's socket, after which it is idle and can be leased.
When a process exits, its exit code or signal is kept so whoever held it can
say how it died.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker process as the node daemon sees it."""

    worker_id: bytes
    proc: asyncio.subprocess.Process
    pid: int
    address: dict | None = None  # set on registration
    conn: object = None
    lease: object = None
    actor_id: bytes | None = None
    registered: asyncio.Future | None = None
    exit_info: dict | None = None
    exited: asyncio.Future | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    idle_since: float = 0.0


def describe_exit(code: int | None) -> str:
    """Words for a process's exit status."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (likely killed for using too much memory)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class WorkerPool:
    """The node's worker processes."""

    def __init__(self, env: dict, on_output: Callable[[Worker, bytes, bool], None]) -> None:
        self.env = env
        self.on_output = on_output
        self.workers: dict[bytes, Worker] = {}
        #: Recently exited workers, kept so holders can ask how they died.
        self.dead: collections.OrderedDict[bytes, Worker] = collections.OrderedDict()
        self.idle: collections.deque[Worker] = collections.deque()
        self.starting = 0
        self.on_exit: Callable[[Worker], None] | None = None

    async def start(self) -> Worker:
        """Starts a worker process and waits until it registers."""
        worker_id = os.urandom(16)
        env = dict(self.env, SKATE_WORKER_ID=worker_id.hex())
        self.starting += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "skate._private.worker_main",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            self.starting -= 1
            raise
        loop = asyncio.get_running_loop()
        w = Worker(worker_id, proc, proc.pid, registered=loop.create_future(), exited=loop.create_future())
        self.workers[worker_id] = w
        asyncio.ensure_future(self._pump(w, proc.stdout, False))
        asyncio.ensure_future(self._pump(w, proc.stderr, True))
        asyncio.ensure_future(self._reap(w))
        try:
            await asyncio.wait({w.registered, w.exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.starting -= 1
        if not w.registered.done():
            raise RuntimeError(
                f"worker pid={w.pid} {describe_exit(w.proc.returncode)} while starting:\n"
                + b"".join(w.tail).decode(errors="replace")
            )
        return w

    def registered(self, worker_id: bytes, address: dict, conn: object) -> Worker | None:
        """Marks a worker as reported in."""
        w = self.workers.get(worker_id)
        if w is None:
            return None
        w.address = address
        w.conn = conn
        if not w.registered.done():
            w.registered.set_result(True)
        return w

    async def _pump(self, w: Worker, stream: asyncio.StreamReader, is_err: bool) -> None:
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            w.tail.append(line)
            self.on_output(w, line, is_err)

    async def _reap(self, w: Worker) -> None:
        code = await w.proc.wait()
        w.exit_info = {"code": code, "how": describe_exit(code)}
        self.workers.pop(w.worker_id, None)
        self.dead[w.worker_id] = w
        while len(self.dead) > 1000:
            self.dead.popitem(last=False)
        try:
            self.idle.remove(w)
        except ValueError:
            pass
        # Let the output pumps drain so the tail holds the last lines.
        await asyncio.sleep(0)
        if not w.exited.done():
            w.exited.set_result(w.exit_info)
        if self.on_exit:
            self.on_exit(w)

    async def stop_all(self, grace: float = 2.0) -> None:
        """Stops every worker: SIGTERM, then SIGKILL after ``grace`` seconds."""
        procs = [w for w in self.workers.values()]
        for w in procs:
            _signal(w.pid, signal.SIGTERM)
        if procs:
            done, pending = await asyncio.wait([w.exited for w in procs], timeout=grace)
            for w in procs:
                if not w.exited.done():
                    _signal(w.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait([w.exited for w in procs], timeout=grace)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
