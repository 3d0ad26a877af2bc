"""Crashes and exits: dead nodes, killed drivers, killed actors, worker output.

Processes are real; every wait for a state has a deadline (``wait_for``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import psutil
import pytest
from conftest import pid_gone, wait_for, wait_printed

import skate
from skate import exceptions as exc
from skate._private import wire
from skate._private.config import CONFIG


def _node_alive(node_id: str) -> bool | None:
    for n in skate.nodes():
        if n["NodeID"] == node_id:
            return n["Alive"]
    return None


def _shm_with_prefix(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    except FileNotFoundError:
        return []


@skate.remote(num_cpus=0)
def where() -> str:
    return skate.get_runtime_context().get_node_id()


# --- dead nodes ----------------------------------------------------------------------------


def test_killed_node_daemon_is_marked_dead(cluster):
    node = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    skate.init(address=cluster.address)
    assert skate.get(where.options(resources={"doomed": 1}).remote(), timeout=60) == node.node_id
    workers = [p.pid for p in psutil.Process(node.pid).children(recursive=True)]
    assert workers, "the node daemon has no worker processes"
    node.kill()
    wait_for(lambda: _node_alive(node.node_id) is False, timeout=30, what="the killed node to be marked dead")
    wait_for(lambda: "doomed" not in skate.cluster_resources(), timeout=30, what="its resources to go")
    assert skate.cluster_resources()["CPU"] == 1
    # Its workers do not outlive it.
    wait_for(lambda: all(pid_gone(p) for p in workers), timeout=30, what="the dead node's workers to exit")
    # The rest of the cluster keeps working.
    assert skate.get(where.remote(), timeout=60) == cluster.head_node.node_id


def test_remove_node_without_grace(cluster):
    node = cluster.add_node(num_cpus=1)
    skate.init(address=cluster.address)
    assert any(n["NodeID"] == node.node_id and n["Alive"] for n in skate.nodes())
    cluster.remove_node(node, allow_graceful=False)
    assert _node_alive(node.node_id) is False
    assert node not in cluster.list_all_nodes()
    assert wait_for(lambda: skate.cluster_resources().get("CPU") == 1, what="CPU total to drop")
    assert pid_gone(node.pid)


def test_task_on_killed_node_fails(cluster, tmp_path):
    """A task whose node dies (no retries left) fails instead of hanging."""
    node = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    skate.init(address=cluster.address)
    started = tmp_path / "started"

    @skate.remote(num_cpus=0, resources={"doomed": 1}, max_retries=0)
    def slow(marker):
        import time

        with open(marker, "w") as f:
            f.write(skate.get_runtime_context().get_node_id())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)

    ref = slow.remote(str(started))
    wait_for(lambda: started.exists() and started.read_text(), timeout=30, what="the task to start")
    assert started.read_text() == node.node_id
    node.kill()
    with pytest.raises(exc.RayError) as info:
        skate.get(ref, timeout=30)
    assert not isinstance(info.value, exc.GetTimeoutError)


def test_actor_on_killed_node_dies(cluster):
    node = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    skate.init(address=cluster.address)

    @skate.remote(resources={"doomed": 1})
    class A:
        def ping(self):
            return "pong"

    a = A.remote()
    assert skate.get(a.ping.remote(), timeout=60) == "pong"
    node.kill()
    wait_for(lambda: _node_alive(node.node_id) is False, timeout=30, what="the node to be marked dead")
    with pytest.raises(exc.RayActorError):
        skate.get(a.ping.remote(), timeout=30)


# --- drivers that go away ---------------------------------------------------------------------

_EMBEDDED_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import psutil
    import skate

    skate.init(num_cpus=1)

    @skate.remote
    def f(x):
        return os.getpid()

    @skate.remote
    class A:
        def pid(self):
            return os.getpid()

    a = A.remote()
    pids = skate.get([f.remote(i) for i in range(3)]) + [skate.get(a.pid.remote())]
    big = skate.put(np.ones(1_000_000))
    assert skate.get(big).sum() == 1_000_000
    me = psutil.Process()
    kids = [p.pid for p in me.children(recursive=True)]
    print(json.dumps({
        "pids": sorted(set(kids) | set(pids)),
        "node": skate.get_runtime_context().get_node_id(),
    }), flush=True)
    time.sleep(600)
    """
)


def _start_driver(script: str, tmp_path, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
    path = tmp_path / "driver.py"
    path.write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    line = _read_json_line(proc)
    return proc, line


def _read_json_line(proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The first line of ``proc``'s stdout that is a JSON object."""
    result: dict = {}

    def reader():
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                result.update(json.loads(line))
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the driver printed no JSON line within {timeout}s:\n{out}\n{err}")
    return result


@pytest.fixture
def short_temp_dir():
    """A private, short SKATE_TEMP_DIR (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="sk-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sigkilled_driver_leaves_no_processes(tmp_path, short_temp_dir):
    # A temp dir of its own: a killed driver cannot remove its session folder.
    proc, info = _start_driver(_EMBEDDED_DRIVER, tmp_path, {"SKATE_TEMP_DIR": short_temp_dir})
    pids = info["pids"]
    assert len(pids) >= 3, pids  # control store, node daemon, workers
    prefix = CONFIG.shm_prefix + "-" + info["node"][:12]
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    wait_for(lambda: all(pid_gone(p) for p in pids), timeout=30, what=f"the dead driver's processes {pids} to exit")
    wait_for(lambda: not _shm_with_prefix(prefix), timeout=30, what="the dead driver's shared memory to go")


_CONNECTED_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import skate

    skate.init(address=sys.argv[1])
    marker_dir = sys.argv[2]

    @skate.remote(num_cpus=1)
    def forever(marker_dir):
        import os, time
        open(os.path.join(marker_dir, f"task-{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.05)

    @skate.remote(num_cpus=0)
    class Holder:
        def pid(self):
            return os.getpid()

    h = Holder.remote()
    actor_pid = skate.get(h.pid.remote())
    ref = forever.remote(marker_dir)
    print(json.dumps({"actor_pid": actor_pid}), flush=True)
    time.sleep(600)
    """
)


def test_sigkilled_connected_driver_releases_its_workers(cluster, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(_CONNECTED_DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), cluster.address, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = _read_json_line(proc)
        marker = wait_for(
            lambda: [n for n in os.listdir(tmp_path) if n.startswith("task-")],
            timeout=60,
            what="the driver's task to start",
        )
        task_pid = int(marker[0].split("-")[1])
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    # The task's worker and the (non-detached) actor die with their owner.
    wait_for(lambda: pid_gone(task_pid), timeout=30, what="the orphaned task's worker to be stopped")
    wait_for(lambda: pid_gone(info["actor_pid"]), timeout=30, what="the orphaned actor to be stopped")
    # The cluster is unharmed and its CPU is free again.
    skate.init(address=cluster.address)
    wait_for(lambda: skate.available_resources().get("CPU") == 1, timeout=30, what="the CPU to be free again")
    assert skate.get(where.remote(), timeout=60) == cluster.head_node.node_id


def test_shutdown_leaves_no_processes():
    skate.init(num_cpus=1)
    assert skate.get(where.remote(), timeout=60)
    me = psutil.Process()
    kids = [p.pid for p in me.children(recursive=True)]
    assert kids
    skate.shutdown()
    assert not skate.is_initialized()
    wait_for(lambda: all(pid_gone(p) for p in kids), timeout=30, what="every process to exit after shutdown")


# --- worker output ------------------------------------------------------------------------------


class _LogTap:
    """Subscribes to the control store's ``logs`` channel in a thread of its own."""

    def __init__(self, address: str, token: bytes) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address, token), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the log tap did not connect"
        if self._error:
            raise self._error

    def _run(self, address: str, token: bytes) -> None:
        self._loop.run_until_complete(self._main(address, token))
        self._loop.close()

    async def _main(self, address: str, token: bytes) -> None:
        self._stop = asyncio.Event()

        def on_pub(conn, body, bufs):
            channel, msg = body
            if channel == "logs":
                self.lines.extend(text for text, _ in msg)

        try:
            conn = await wire.connect(address, token, {"pub": on_pub})
            await conn.request("subscribe", ["logs"])
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        conn.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def log_tap(cluster):
    tap = _LogTap(cluster.address, cluster._info["token"])
    yield tap
    tap.close()


@skate.remote
def chatty(tag):
    print(f"hello-out-{tag}")
    print(f"hello-err-{tag}", file=sys.stderr)
    return os.getpid()


@skate.remote
class Talker:
    def say(self, text):
        print(text)
        return os.getpid()


def test_worker_output_reaches_driver_with_prefix(cluster, capfd):
    skate.init(address=cluster.address)
    pid = skate.get(chatty.remote("x1"), timeout=60)
    out1, err1 = wait_printed(capfd, "hello-out-x1")
    out2, err2 = wait_printed(capfd, "hello-err-x1")
    seen = {"out": out1 + out2, "err": err1 + err2}
    assert f"(chatty pid={pid}) hello-out-x1" in seen["out"]
    assert f"(chatty pid={pid}) hello-err-x1" in seen["err"]
    assert "hello-err-x1" not in seen["out"]


def test_actor_output_prefixed_with_class_name(cluster, capfd):
    skate.init(address=cluster.address)
    t = Talker.remote()
    pid = skate.get(t.say.remote("actor-says-hi"), timeout=60)
    out, _ = wait_printed(capfd, "actor-says-hi")
    assert f"(Talker pid={pid}) actor-says-hi" in out


def test_log_to_driver_false_suppresses_output(cluster, log_tap, capfd):
    skate.init(address=cluster.address, log_to_driver=False)
    pid = skate.get(chatty.remote("quiet-please"), timeout=60)
    # The lines were published (the tap saw them) ...
    wait_for(
        lambda: any("hello-out-quiet-please" in ln for ln in log_tap.lines)
        and any("hello-err-quiet-please" in ln for ln in log_tap.lines),
        timeout=30,
        what="the lines to be published",
    )
    assert any(f"pid={pid}" in ln for ln in log_tap.lines)
    # ... and one more round trip to the control store orders after them.
    skate.nodes()
    out, err = capfd.readouterr()
    assert "quiet-please" not in out
    assert "quiet-please" not in err


def test_output_in_subprocess_driver(tmp_path):
    """A plain driver script: its stdout carries the workers' prefixed lines."""
    script = tmp_path / "drv.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            import skate

            skate.init(num_cpus=1)

            @skate.remote
            def speak(i):
                print(f"line-{i}")
                return os.getpid()

            pids = skate.get([speak.remote(i) for i in range(3)])
            print("PIDS", " ".join(map(str, sorted(set(pids)))), flush=True)
            # Keep running until the output arrived (printed by skate's I/O thread).
            sys.stdin.readline()
            skate.shutdown()
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_for(
            lambda: all(any(ln.endswith(f"line-{i}") for ln in lines) for i in range(3))
            and any(ln.startswith("PIDS") for ln in lines),
            timeout=60,
            what="the driver's output",
        )
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        rc = proc.wait(timeout=60)
        t.join(10)
    assert rc == 0, "\n".join(lines)
    pids = next(ln for ln in lines if ln.startswith("PIDS")).split()[1:]
    for i in range(3):
        line = next(ln for ln in lines if ln.endswith(f"line-{i}"))
        assert line.startswith("(speak pid="), line
        assert line.split("pid=")[1].split(")")[0] in pids


# --- actors killed while a call runs ------------------------------------------------------------


@skate.remote
class Sleeper:
    def pid(self):
        return os.getpid()

    def block(self, marker):
        import time

        open(marker, "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return "finished"


def test_kill_actor_with_call_in_flight(ray_start, tmp_path):
    marker = tmp_path / "started"
    a = Sleeper.remote()
    pid = skate.get(a.pid.remote(), timeout=60)
    ref = a.block.remote(str(marker))
    wait_for(marker.exists, timeout=30, what="the call to start")
    skate.kill(a)
    with pytest.raises(exc.ActorDiedError):
        skate.get(ref, timeout=30)
    wait_for(lambda: pid_gone(pid), timeout=30, what="the actor's process to exit")
    with pytest.raises(exc.RayActorError):
        skate.get(a.pid.remote(), timeout=30)


def test_actor_process_crash_with_call_in_flight(ray_start, tmp_path):
    marker = tmp_path / "started"
    a = Sleeper.remote()
    pid = skate.get(a.pid.remote(), timeout=60)
    ref = a.block.remote(str(marker))
    queued = a.pid.remote()
    wait_for(marker.exists, timeout=30, what="the call to start")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError):
        skate.get(ref, timeout=30)
    with pytest.raises(exc.RayActorError):
        skate.get(queued, timeout=30)
    with pytest.raises(exc.RayActorError):
        skate.get(a.pid.remote(), timeout=30)
    # Other work is unaffected.
    assert skate.get(where.remote(), timeout=60)


def test_worker_crash_in_task_raises(ray_start):
    @skate.remote(max_retries=0)
    def die():
        os._exit(3)

    with pytest.raises(exc.WorkerCrashedError):
        skate.get(die.remote(), timeout=60)
    assert skate.get(where.remote(), timeout=60)
