"""Shared start-up for the daemon processes (control store, node daemon).

A daemon is started by ``node.py`` with a pipe on which it writes one JSON
line once it listens (its addresses), so the parent waits for readiness
instead of polling.  SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from skate._private import proctitle


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop, uvloop's when it is installed."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def report_ready(info: dict) -> None:
    """Writes the readiness line to the pipe named by SKATE_READY_FD."""
    fd = os.environ.pop("SKATE_READY_FD", None)
    if fd is None:
        print(json.dumps(info), flush=True)
        return
    with os.fdopen(int(fd), "w") as f:
        f.write(json.dumps(info) + "\n")


def raise_fd_limit() -> int:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.

    A node daemon holds a connection per worker and per peer, a control
    store one per node and driver: the usual soft limit of 1,024 is reached
    by a few hundred actors or nodes.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop_event)`` until it returns; signals set ``stop_event``."""
    raise_fd_limit()
    logging.basicConfig(
        level=os.environ.get("SKATE_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    die_with_parent()
    name = proctitle.daemon_name()
    if name:
        proctitle.set_title(name)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(main(stop))
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        # Handlers go before the loop closes its wake-up pipe: a signal in between
        # would print "Exception ignored ... Bad file descriptor" (close does it after).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        loop.close()


def die_with_parent() -> None:
    """Asks the kernel to SIGTERM us when the process that started us exits.

    Set for daemons of an embedded cluster (SKATE_PARENT_PID), so a driver
    killed with SIGKILL leaves nothing behind.
    """
    parent = os.environ.pop("SKATE_PARENT_PID", None)
    if not parent:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)
