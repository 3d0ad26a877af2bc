"""Starting, tracking and reaping a node's worker processes.

Workers are forked by the node's zygote (see ``zygote.py``) with their
output on pipes; each line they print is handed to ``on_output`` (the node
daemon forwards it to drivers).  A worker reports in with ``register_worker``
over the node daemon's socket, after which it is idle and can be leased.
When a process exits, its exit code or signal is kept so whoever held it can
say how it died.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from skate._private.raylet import zygote

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker process as the node daemon sees it."""

    worker_id: bytes
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
    pumps: list = field(default_factory=list)
    out_fds: list = field(default_factory=list)  # its stdout/stderr pipes
    #: What the worker is kept to (see ``fits``): its runtime_env's hash (fixed at
    #: start), and, once first leased, its job, GPU use and actor use.
    tags: WorkerTags = field(default_factory=lambda: WorkerTags())


@dataclass
class WorkerTags:
    """What a worker may be lent for (like Ray's worker pool: a worker serves one job,
    one runtime_env, GPU or non-GPU work, and actors or tasks, never both kinds)."""

    env: str | None = None  # hash of its runtime_env; None: the default environment
    job: int | None = None  # None until first leased
    gpu: bool | None = None
    actor: bool | None = None


def fits(have: WorkerTags, want: WorkerTags) -> bool:
    """Whether a worker tagged ``have`` may take a lease asking for ``want``.

    The environment must be the same; job, GPU use and actor use must match
    where the worker already has one (a fresh worker takes any).
    """
    return (
        have.env == want.env
        and (have.job is None or have.job == want.job)
        and (have.gpu is None or have.gpu == want.gpu)
        and (have.actor is None or have.actor == want.actor)
    )


def tags_of_request(body: dict, env_hash: str | None) -> WorkerTags:
    """The tags a lease request asks for."""
    return WorkerTags(env_hash, body.get("job"), bool(body["resources"].get("GPU")), body.get("actor_id") is not None)


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
        self.zygote: socket.socket | None = None
        #: A zygote forked by the daemon at start-up (see zygote.fork_early).
        self.early_zygote: socket.socket | None = None
        self._zygote_starting: asyncio.Future | None = None
        self._forks: collections.deque[asyncio.Future] = collections.deque()
        self._fork_lock: asyncio.Lock | None = None
        self._by_pid: dict[int, Worker] = {}
        self._early_exits: dict[int, int] = {}

    async def _zygote(self) -> socket.socket:
        """The zygote's socket, starting a zygote if there is none."""
        if self.zygote is not None:
            return self.zygote
        if self._zygote_starting is None:
            self._zygote_starting = asyncio.ensure_future(self._start_zygote())
        return await asyncio.shield(self._zygote_starting)

    async def _start_zygote(self) -> socket.socket:
        if self.early_zygote is not None:
            ours, self.early_zygote = self.early_zygote, None
            return self._watch_zygote(ours)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._zygote_proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "skate._private.raylet.zygote", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), env=self.env, stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        return self._watch_zygote(ours)

    def _watch_zygote(self, ours: socket.socket) -> socket.socket:
        ours.setblocking(False)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_zygote, ours)
        self.zygote = ours
        self._zygote_starting = None
        return ours

    def _on_zygote(self, sock: socket.socket) -> None:
        while True:
            try:
                msg, fds = zygote.recv_message(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = None, []
            if msg is None:
                self._zygote_gone(sock)
                return
            if "pid" in msg:
                fut = self._forks.popleft()
                if not fut.done():
                    fut.set_result((msg["pid"], fds))
            elif "exit" in msg:
                w = self._by_pid.pop(msg["exit"], None)
                if w is None:
                    self._early_exits[msg["exit"]] = msg["code"]
                else:
                    asyncio.ensure_future(self._exited(w, msg["code"]))

    def _zygote_gone(self, sock: socket.socket) -> None:
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        if self.zygote is sock:
            self.zygote = None
        while self._forks:
            fut = self._forks.popleft()
            if not fut.done():
                fut.set_exception(RuntimeError("the worker zygote exited"))
        # Its workers were its children: they are gone or orphaned; stop them.
        for w in list(self._by_pid.values()):
            signal_pid(w.pid, signal.SIGKILL)
            asyncio.ensure_future(self._exited(w, -signal.SIGKILL))
        self._by_pid.clear()

    def take_idle(self, want: WorkerTags) -> Worker | None:
        """The most recently idle live worker that fits ``want`` (taken out of the pool)."""
        idle = self.idle
        for i in range(len(idle) - 1, -1, -1):
            w = idle[i]
            if w.exit_info is None and fits(w.tags, want):
                del idle[i]
                return w
        return None

    async def start(self, setup: dict | None = None, env_hash: str | None = None) -> Worker:
        """Forks a worker process and waits until it registers.

        ``setup``: what the child applies for its runtime_env (``NodeEnvs.prepare``),
        whose hash is ``env_hash``.
        """
        worker_id = os.urandom(16)
        loop = asyncio.get_running_loop()
        self.starting += 1
        try:
            sock = await self._zygote()
            fut = loop.create_future()
            env = {k: v for k, v in self.env.items() if k.startswith("SKATE_")}
            env["SKATE_WORKER_ID"] = worker_id.hex()
            # Known before the fork: the worker may register before the fork's answer is read.
            w = Worker(worker_id, 0, registered=loop.create_future(), exited=loop.create_future())
            w.tags.env = env_hash
            self.workers[worker_id] = w
            request = {"env": env, "setup": setup} if setup else {"env": env}
            try:
                await self._ask_fork(sock, fut, json.dumps(request).encode())
                pid, fds = await fut
            except BaseException:
                self.workers.pop(worker_id, None)
                raise
            w.pid = pid
            self._by_pid[pid] = w
            w.out_fds = list(fds)
            for fd, is_err in zip(fds, (False, True), strict=False):
                reader = asyncio.StreamReader(limit=1 << 20)
                await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), os.fdopen(fd, "rb", buffering=0))
                w.pumps.append(asyncio.ensure_future(self._pump(w, reader, is_err)))
            if pid in self._early_exits:
                self._by_pid.pop(pid, None)
                asyncio.ensure_future(self._exited(w, self._early_exits.pop(pid)))
            await asyncio.wait({w.registered, w.exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.starting -= 1
        if not w.registered.done():
            raise RuntimeError(
                f"worker pid={w.pid} {describe_exit(w.exit_info['code'] if w.exit_info else None)} while starting:\n"
                + b"".join(w.tail).decode(errors="replace")
            )
        return w

    async def _ask_fork(self, sock: socket.socket, fut: asyncio.Future, request: bytes) -> None:
        """Sends a fork request; answers come back in request order, matched to ``_forks``.

        Many starts at once fill the zygote's socket: a send then waits for
        room, and the lock keeps requests and their futures in one order.
        """
        if self._fork_lock is None:
            self._fork_lock = asyncio.Lock()
        async with self._fork_lock:
            self._forks.append(fut)
            try:
                await asyncio.get_running_loop().sock_sendall(sock, request)
            except BaseException:
                if fut in self._forks:
                    self._forks.remove(fut)
                raise

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

    async def drain_output(self) -> None:
        """Returns once the lines workers have written so far were handed on."""
        for _ in range(100):
            fds = [fd for w in self.workers.values() if w.exit_info is None for fd in w.out_fds]
            try:
                pending = select.select(fds, [], [], 0)[0] if fds else []
            except (OSError, ValueError):  # a pipe closed just now
                pending = fds
            # Twice: the pipe's reader fills the stream, then the pump takes lines.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if not pending:
                return

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

    async def _exited(self, w: Worker, code: int) -> None:
        # Let the output pumps drain so the tail holds the last lines.
        if w.pumps:
            await asyncio.wait(w.pumps, timeout=1.0)
        w.exit_info = {"code": code, "how": describe_exit(code)}
        self.workers.pop(w.worker_id, None)
        self.dead[w.worker_id] = w
        while len(self.dead) > 1000:
            self.dead.popitem(last=False)
        try:
            self.idle.remove(w)
        except ValueError:
            pass
        if not w.exited.done():
            w.exited.set_result(w.exit_info)
        if self.on_exit:
            self.on_exit(w)

    async def stop_all(self, grace: float = 2.0) -> None:
        """Stops every worker: SIGTERM, then SIGKILL after ``grace`` seconds."""
        procs = [w for w in self.workers.values()]
        for w in procs:
            signal_pid(w.pid, signal.SIGTERM)
        if procs:
            done, pending = await asyncio.wait([w.exited for w in procs], timeout=grace)
            for w in procs:
                if not w.exited.done():
                    signal_pid(w.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait([w.exited for w in procs], timeout=grace)
        if self.zygote is not None:
            asyncio.get_running_loop().remove_reader(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None


def signal_pid(pid: int, sig: int) -> None:
    """Signals a worker process; gone or not yet forked is not an error."""
    if pid <= 0:  # not forked yet: never signal a process group
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
