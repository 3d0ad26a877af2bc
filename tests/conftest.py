"""Shared fixtures: a local cluster per test and a leak check after every test.

The leak check fails a test that leaves behind a child process, a thread,
a ``/dev/shm/skate-*`` segment, a session folder (sockets, spilled objects) or
an initialized runtime.  It waits for things to go away with a deadline
rather than sleeping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid

# Before skate reads its configuration: this test run gets its own session
# folder and shared-memory names, so runs side by side never see each other's.
_RUN_DIR = tempfile.mkdtemp(prefix="sk-")
os.environ.setdefault("SKATE_TEMP_DIR", _RUN_DIR)
os.environ.setdefault("SKATE_SHM_PREFIX", f"skt{os.getpid()}")
# Every process of the tests' clusters refuses a message field that is not
# declared in skate._private.messages (fields are otherwise dropped unseen).
os.environ.setdefault("SKATE_STRICT_MESSAGES", "1")
# init() and `skate start --head` start a dashboard process when its extra is
# installed (like Ray); the suite's hundreds of clusters go without it, and the
# tests of tests/dashboard ask for it (or check this default with it unset).
os.environ.setdefault("SKATE_INCLUDE_DASHBOARD", "0")
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


# --- object store unit tests (tests/object_store/) ----------------------------------------------
def object_id(i: int) -> bytes:
    """A 20-byte object id made from ``i``."""
    return i.to_bytes(4, "little") * 5


@pytest.fixture
def prefix():
    """A unique shared-memory name prefix for a store under test; its files go with the test."""
    from skate._private.object_store import shm

    p = f"skatetest{uuid.uuid4().hex[:12]}"  # (not "skate-...": these are no cluster's segments)
    yield p
    for name in os.listdir(shm.SHM_DIR or "/tmp"):
        if name.startswith(p):
            os.unlink(os.path.join(shm.SHM_DIR or "/tmp", name))


def shm_files(prefix: str) -> set[str]:
    """The shared-memory files named with ``prefix``."""
    from skate._private.object_store import shm

    return {n for n in os.listdir(shm.SHM_DIR or "/tmp") if n.startswith(prefix)}


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
def no_leaks(request):
    """Fails the test if it leaks processes, shared memory or session folders."""
    shm_before = _shm()
    sessions_before = _sessions()
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    yield
    if skate.is_initialized():
        try:
            _check_stores_drained(request)
        finally:
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

    def new_threads() -> list:
        return [t.name for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    try:
        wait_for(lambda: not new_threads(), 10, what="threads the test started to end")
    except AssertionError:
        raise AssertionError(f"test leaked threads: {new_threads()}") from None


def _stores_in_use() -> dict:
    """Objects and pinned (mapped) segments on each live node of the current cluster."""
    import asyncio

    from skate._private import runtime, wire

    core = runtime.current_or_none()

    async def one(uds: str) -> dict:
        conn = await wire.connect(uds, core.token, {})
        try:
            return (await conn.request("node_stats"))["store"]
        finally:
            conn.close()

    async def all_nodes() -> dict:
        nodes = [n for n in await (await core.gcs()).request("get_nodes") if n["alive"]]
        stats = await asyncio.gather(*(one(n["uds"]) for n in nodes), return_exceptions=True)
        return {
            n["node_id"].hex()[:12]: {"objects": st["objects"], "pinned": st["pinned"]}
            for n, st in zip(nodes, stats, strict=True)
            if isinstance(st, dict) and (st["objects"] or st["pinned"])
        }

    return core.call(all_nodes(), timeout=10)


def _check_stores_drained(request) -> None:
    """After a test, once its refs are gone, no node stores or pins an object.

    Runs before the cluster fixtures tear the cluster down.  Actors a test
    leaves alive may hold objects on purpose: their tests are marked
    ``keeps_objects``.
    """
    import gc

    if not skate.is_initialized() or request.node.get_closest_marker("keeps_objects") is not None:
        return
    if getattr(request.node, "rep_call_failed", False):
        return  # the test's own failure says more
    gc.collect()
    try:
        wait_for(lambda: not _stores_in_use(), 10, interval=0.05, what="stores to drain")
    except AssertionError:
        raise AssertionError(f"objects left in the object store after the test: {_stores_in_use()}") from None


@pytest.fixture
def ray_start(request):
    """A local 2-CPU cluster for one test; yields the skate module."""
    skate.init(num_cpus=2)
    yield skate
    try:
        _check_stores_drained(request)
    finally:
        skate.shutdown()


@pytest.fixture
def ray_start_4cpu(request):
    """A local 4-CPU cluster for one test."""
    skate.init(num_cpus=4)
    yield skate
    try:
        _check_stores_drained(request)
    finally:
        skate.shutdown()


@pytest.fixture
def cluster(request):
    """A Cluster with a 1-CPU head; tests add nodes and connect themselves."""
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield c
    try:
        _check_stores_drained(request)
    finally:
        c.shutdown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.rep_call_failed = True


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


@pytest.fixture
def redis_url(tmp_path):
    """A real ``redis-server`` of its own (free port, temp dir) for one test; yields its URL.

    Skips when redis-server is not installed (``scripts/test.sh`` installs it).
    """
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    from skate._private.node import free_port

    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--logfile", str(tmp_path / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            assert proc.poll() is None, "redis-server exited at start"
            return False

    try:
        wait_for(up, 10, what="redis-server to answer")
        yield f"redis://127.0.0.1:{port}"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gcs_server_pid(cluster) -> int:
    """The pid of the control store a supervised head is running now."""
    sup = psutil.Process(cluster._gcs_proc.proc.pid)
    for p in sup.children():
        try:
            if " ".join(p.cmdline()).startswith("skate::gcs") and "supervisor" not in " ".join(p.cmdline()):
                return p.pid
        except psutil.Error:  # a dead one not reaped yet
            pass
    return 0


@pytest.fixture
def cli():
    """A temp dir for `skate start` clusters, stopped (and checked for leftovers) after the test."""
    from test_cli import CliHost

    host = CliHost()
    try:
        yield host
    finally:
        host.close()
