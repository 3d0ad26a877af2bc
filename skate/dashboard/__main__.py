"""``python -m skate.dashboard``: the dashboard process the head starts (see ``server.py``).

Until the first browser, API client or Prometheus scrape connects, the
process only waits on the listening socket it inherited: it imports
nothing heavy, so an idle cluster pays about 10 MB for it and a cluster's
start pays no CPU for it.  The first connection (held in the socket's
backlog meanwhile) brings the web server up, in about a third of a second.
It runs at a lower CPU priority than the cluster's work, and exits when the
control store's process does (or with the process that started it).
"""

import os
import select
import signal
import sys


def _arg(name: str) -> str:
    return sys.argv[sys.argv.index(name) + 1]


def _die_with_parent() -> None:
    parent = os.environ.get("SKATE_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        return
    if os.getppid() != int(parent):
        sys.exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (the head has not reaped it yet) counts as gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True


def _wait_for_first_client() -> None:
    fd = int(_arg("--listen-fd"))
    gcs_pid = int(_arg("--gcs-pid"))
    while True:
        readable, _, _ = select.select([fd], [], [], 2.0)
        if readable:
            return
        if not _alive(gcs_pid):
            sys.exit(0)


if __name__ == "__main__":
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        from setproctitle import setproctitle

        setproctitle("skate::dashboard")
    except ImportError:
        pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _die_with_parent()
    ready = os.environ.pop("SKATE_READY_FD", None)
    if ready is not None:
        os.close(int(ready))  # nobody waits for this process to be ready
    _wait_for_first_client()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from skate.dashboard import server

    server.run()
