"""The `skate` command: start a head and a node, use them from a driver, status, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from conftest import wait_for

from skate._private import node

pytestmark = pytest.mark.timeout(180)

SKATE = [sys.executable, "-m", "skate.cli"]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*SKATE, *args], capture_output=True, text=True, timeout=120, check=check)


def _daemon_pids() -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
        except psutil.Error:
            continue
        if "skate._private" in cmd and env.get("SKATE_TEMP_DIR") == os.environ["SKATE_TEMP_DIR"]:
            out.append(p.info["pid"])
    return out


def test_start_status_driver_stop():
    port = node.free_port()
    try:
        head = _run("start", "--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"head": 1}')
        assert f"127.0.0.1:{port}" in head.stdout
        other = _run("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"other": 1}')
        assert "joined" in other.stdout
        driver = textwrap.dedent(
            f"""
            import skate
            skate.init(address="127.0.0.1:{port}")
            assert skate.cluster_resources()["CPU"] == 2, skate.cluster_resources()

            @skate.remote(resources={{"other": 1}})
            def where():
                return skate.get_runtime_context().get_node_id()

            assert skate.get(where.remote()) != skate.get_runtime_context().get_node_id()
            skate.shutdown()
            print("driver ok")
            """
        )
        out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
        assert "driver ok" in out.stdout, out.stderr
        status = _run("status", "--address", f"127.0.0.1:{port}")
        assert "2 node(s) alive" in status.stdout
        # The driver's worker leases go back as the nodes notice it left;
        # their next resource report shows it.
        wait_for(
            lambda: "CPU: 0 / 2" in _run("status", "--address", f"127.0.0.1:{port}").stdout,
            30,
            what="the departed driver's CPUs to show as free",
        )
        assert _daemon_pids(), "the daemons should be running"
    finally:
        stopped = _run("stop", check=False)
    assert "stopped" in stopped.stdout
    wait_for(lambda: not _daemon_pids(), 30, what="the daemons to exit")


def test_start_needs_head_or_address():
    bad = _run("start", check=False)
    assert bad.returncode != 0
    assert "--head or --address" in bad.stderr


def test_join_without_token_is_refused():
    bad = _run("start", "--address", f"127.0.0.1:{node.free_port()}", check=False)
    assert bad.returncode != 0
    assert "SKATE_CLUSTER_TOKEN" in bad.stderr


def _control_store_pid() -> int:
    for pid in _daemon_pids():
        try:
            if "skate._private.gcs.server" in " ".join(psutil.Process(pid).cmdline()):
                return pid
        except psutil.Error:
            pass
    return 0


def test_start_head_with_redis_storage_survives_a_control_store_kill(redis_url):
    port = node.free_port()
    try:
        _run("start", "--head", "--port", str(port), "--num-cpus", "1", "--storage", redis_url)
        driver = textwrap.dedent(
            f"""
            import skate
            skate.init(address="127.0.0.1:{port}", namespace="cli")

            @skate.remote
            class Keeper:
                def get(self):
                    return "kept"

            k = Keeper.options(name="keeper", lifetime="detached").remote()
            assert skate.get(k.get.remote()) == "kept"
            skate.shutdown()
            """
        )
        subprocess.run([sys.executable, "-c", driver], check=True, timeout=120)
        raylets = [p for p in _daemon_pids() if "raylet" in " ".join(psutil.Process(p).cmdline())]
        old = wait_for(_control_store_pid, 10, what="the control store")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: _control_store_pid() not in (0, old), 15, what="a new control store")
        check = textwrap.dedent(
            f"""
            import skate
            skate.init(address="127.0.0.1:{port}", namespace="cli")
            print(skate.get(skate.get_actor("keeper").get.remote()))
            skate.shutdown()
            """
        )
        out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
        assert "kept" in out.stdout, out.stderr
        assert all(psutil.pid_exists(p) for p in raylets), "node daemons rode out the outage"
        assert "1 node(s) alive" in _run("status", "--address", f"127.0.0.1:{port}").stdout
    finally:
        stopped = _run("stop", check=False)
    assert "stopped" in stopped.stdout
    wait_for(lambda: not _daemon_pids(), 30, what="the daemons to exit")


def test_storage_is_for_a_head_only():
    bad = _run("start", "--address", "127.0.0.1:1", "--storage", "redis://127.0.0.1:1", check=False)
    assert bad.returncode != 0 and "--head" in bad.stderr


def test_stop_force_leaves_no_segments_behind():
    from skate._private.config import CONFIG

    port = node.free_port()

    def segments() -> list[str]:
        return [n for n in os.listdir("/dev/shm") if n.startswith(CONFIG.shm_prefix + "-")]

    before = set(segments())
    try:
        _run("start", "--head", "--port", str(port), "--num-cpus", "1")
        driver = textwrap.dedent(
            f"""
            import skate
            skate.init(address="127.0.0.1:{port}", namespace="seg")

            @skate.remote
            class Holder:
                def __init__(self):
                    self.ref = skate.put(b"h" * 1_000_000)  # owned by the actor: outlives this driver

                def ready(self):
                    return True

            h = Holder.options(name="h", lifetime="detached").remote()
            assert skate.get(h.ready.remote())
            skate.shutdown()
            """
        )
        subprocess.run([sys.executable, "-c", driver], check=True, timeout=120)
        assert set(segments()) - before, "the actor's object is in shared memory"
    finally:
        stopped = _run("stop", "--force", check=False)
    assert "stopped" in stopped.stdout
    wait_for(lambda: not _daemon_pids(), 30, what="the daemons to exit")
    assert not set(segments()) - before, "segments of SIGKILLed daemons were swept"
