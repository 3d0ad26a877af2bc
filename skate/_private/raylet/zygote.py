"""A fork server for worker processes.

Starting a worker with ``python -m ...`` costs an interpreter start and
~100 ms of imports, per worker, and every actor is a new worker.  The node
daemon instead keeps one *zygote*: a process that imported the worker code
once, is single-threaded and runs no event loop, and forks a worker per
request in about a millisecond.

Protocol on a SOCK_SEQPACKET socket pair (one message per packet, JSON):

    daemon -> zygote : {"env": {...}, "setup": {...}}      fork a worker (setup: its runtime_env)
    zygote -> daemon : {"pid": N}  + fds [stdout, stderr]  read ends of its pipes
    zygote -> daemon : {"exit": N, "code": C}              a worker exited

The zygote exits when the daemon's end closes.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys


def serve(sock: socket.socket) -> None:
    """The zygote's loop: fork on request, report exits; returns when the daemon goes."""
    from skate._private import logs, proctitle

    proctitle.set_title("zygote")
    logs.own_log("zygote")
    # Preload what every worker needs.
    import cloudpickle  # noqa: F401
    import msgspec  # noqa: F401

    import skate._private.core_worker  # noqa: F401
    from skate._private import worker_main  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            ready = []
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock in ready:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                os._exit(0)
            _fork(sock, json.loads(data), (wake_r, wake_w))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(sock: socket.socket, msg: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    try:
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            sock.send(data)
    except OSError:
        os._exit(0)


def _fork(sock: socket.socket, req: dict, wake: tuple[int, int]) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sock.close()
            for fd in (*wake, out_r, err_r):
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (null, out_w, err_w):
                os.close(fd)
            os.setsid()
            os.environ.update(req["env"])
            if req.get("setup"):  # the runtime_env: before any user code
                from skate._private.runtime_env import worker_setup

                worker_setup.apply(req["setup"])
            from skate._private import worker_main

            worker_main.main()
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os.close(out_w)
    os.close(err_w)
    _send(sock, {"pid": pid}, [out_r, err_r])
    os.close(out_r)
    os.close(err_r)


def fork_early() -> socket.socket | None:
    """Forks the zygote from the node daemon itself, before it has threads or a loop.

    This saves the zygote an interpreter start; returns the daemon's end of
    the socket pair (None if forking failed).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ours.close()
            ready = os.environ.pop("SKATE_READY_FD", None)
            if ready is not None:
                try:
                    os.close(int(ready))
                except OSError:
                    pass
            _die_with_parent()
            serve(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return ours


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def recv_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """Reads one message and the descriptors sent with it (daemon side)."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(1 << 16, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def main() -> None:
    """``python -m skate._private.raylet.zygote FD``: serve on an inherited socket."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    _die_with_parent()
    serve(sock)


if __name__ == "__main__":
    main()
