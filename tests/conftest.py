"""Shared fixtures: a local cluster per test and a leak check after every test.

The leak check fails a test that leaves behind a child process, a
``/dev/shm/skate-*`` segment, a session folder (sockets, spilled objects) or
an initialized runtime.  It waits for things to go away with a deadline
rather than sleeping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

# Before skate reads its configuration: this test run gets its own session
# folder and shared-memory names, so runs side by side never see each other's.
_RUN_DIR = tempfile.mkdtemp(prefix="sk-")
os.environ.setdefault("SKATE_TEMP_DIR", _RUN_DIR)
os.environ.setdefault("SKATE_SHM_PREFIX", f"skt{os.getpid()}")
# Every process of the tests' clusters refuses a message field that is not
# declared in skate._private.messages (fields are otherwise dropped unseen).
os.environ.setdefault("SKATE_STRICT_MESSAGES", "1")
# A cluster named by the environment would be joined by every init() of the
# suite instead of the embedded cluster each test starts; tests that want one
# set these themselves.
for _var in ("RAY_ADDRESS", "SKATE_ADDRESS", "SKATE_CLUSTER_TOKEN"):
    os.environ.pop(_var, None)

import psutil  # noqa: E402
import pytest  # noqa: E402

import skate  # noqa: E402
from skate._private.config import CONFIG  # noqa: E402


def _shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(CONFIG.shm_prefix + "-")}
    except FileNotFoundError:
        return set()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RUN_DIR, ignore_errors=True)


def _sessions() -> set[str]:
    try:
        return {n for n in os.listdir(CONFIG.temp_dir) if n.startswith("session_")}
    except FileNotFoundError:
        return set()


def wait_for(cond, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Polls ``cond()`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_in_threads(fn, n: int, timeout: float = 60.0) -> None:
    """Runs ``fn(k)`` for k in range(n) on n threads; fails on any error or hang."""
    import threading

    errors: list = []

    def run(k: int) -> None:
        try:
            fn(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a thread hung"


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _live_children(me: psutil.Process) -> list[psutil.Process]:
    live = []
    for p in me.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                live.append(p)
        except psutil.NoSuchProcess:
            pass
    return live


@pytest.fixture(autouse=True)
def no_leaks():
    """Fails the test if it leaks processes, shared memory or session folders."""
    shm_before = _shm()
    sessions_before = _sessions()
    me = psutil.Process()
    yield
    if skate.is_initialized():
        skate.shutdown()
    try:
        wait_for(lambda: not _live_children(me), 15, what="child processes to exit")
    except AssertionError:
        left = [f"{p.pid}: {' '.join(p.cmdline()[:4])}" for p in me.children(recursive=True)]
        for p in me.children(recursive=True):
            p.kill()
        raise AssertionError(f"test leaked processes: {left}") from None
    try:
        wait_for(lambda: not (_shm() - shm_before), 10, what="shared-memory segments to be removed")
    except AssertionError:
        raise AssertionError(f"test leaked shared memory: {sorted(_shm() - shm_before)}") from None
    leaked = _sessions() - sessions_before
    assert not leaked, f"test leaked session folders: {leaked}"


@pytest.fixture
def ray_start():
    """A local 2-CPU cluster for one test; yields the skate module."""
    skate.init(num_cpus=2)
    yield skate
    skate.shutdown()


@pytest.fixture
def ray_start_4cpu():
    """A local 4-CPU cluster for one test."""
    skate.init(num_cpus=4)
    yield skate
    skate.shutdown()


@pytest.fixture
def cluster():
    """A Cluster with a 1-CPU head; tests add nodes and connect themselves."""
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield c
    c.shutdown()


def wait_printed(capfd, needle: str, timeout: float = 30.0) -> tuple[str, str]:
    """Waits until the driver printed a line containing ``needle``; returns capfd's (out, err).

    Polling ``capfd.readouterr()`` while the runtime's I/O thread writes can
    drop lines (the capture file is read, then truncated), so this waits on
    the runtime's own record of printed lines and reads the capture once.
    """
    from skate._private import runtime

    core = runtime.current_or_none()
    assert core is not None, "skate is not initialized"
    wait_for(lambda: any(needle in ln for ln in list(core.printed)), timeout, what=f"{needle!r} to be printed")
    return capfd.readouterr()
