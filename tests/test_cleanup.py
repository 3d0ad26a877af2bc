"""Nothing a process leaves behind outlives it: objects of dead owners, refs
returned by actor calls, a job's running tasks, segments of a killed node daemon.

Real processes and real shared memory; each test waits on conditions with
deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import pid_gone, wait_for

import skate
from skate._private import node, runtime
from skate._private.config import CONFIG

pytestmark = pytest.mark.timeout(120)

BIG = 400_000  # bytes: above the inline limit, so each value is a segment


def _stats(address: str | None = None) -> dict:
    """``node_stats`` of the local node daemon (or of the daemon at a Unix socket)."""
    from skate._private import wire

    core = runtime.current_or_none()

    async def go() -> dict:
        if address is None:
            return await core.raylet.request("node_stats")
        conn = await wire.connect(address, core.token, {})
        try:
            return await conn.request("node_stats")
        finally:
            conn.close()

    return core.call(go(), timeout=10)


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix + "-") and "-pool" not in n]


@skate.remote
class Maker:
    def make(self) -> list:
        return [skate.put(b"x" * BIG)]


def test_refs_returned_by_actor_calls_are_released(ray_start):
    m = Maker.remote()
    for _ in range(20):
        [inner] = skate.get(m.make.remote())
        assert len(skate.get(inner)) == BIG
        del inner
    wait_for(lambda: _stats()["store"]["objects"] == 0, 15, what="the 20 segments to be freed")


def test_refs_returned_by_tasks_are_released(ray_start):
    @skate.remote
    def make() -> list:
        return [skate.put(b"y" * BIG)]

    for _ in range(5):
        [inner] = skate.get(make.remote())
        assert len(skate.get(inner)) == BIG
        del inner
    wait_for(lambda: _stats()["store"]["objects"] == 0, 15, what="the segments to be freed")


def _driver(address: str, body: str) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        import skate
        skate.init(address={address!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_objects_of_a_driver_that_dies_are_freed(cluster):
    skate.init(address=cluster.address)
    before = _stats()["store"]["objects"]
    d = _driver(
        cluster.address,
        f"""
        refs = [skate.put(b"z" * {BIG}) for _ in range(3)]
        print("ready", flush=True)
        time.sleep(600)
        """,
    )
    try:
        assert d.stdout.readline().strip() == "ready"
        assert _stats()["store"]["objects"] == before + 3
        d.kill()  # no chance to free anything itself
        d.wait(10)
        wait_for(lambda: _stats()["store"]["objects"] == before, 15, what="the dead driver's objects to be freed")
        assert _stats()["owners"] == 0
    finally:
        d.kill()
        d.communicate()


def test_a_task_result_owned_by_a_dead_driver_is_freed(cluster):
    skate.init(address=cluster.address)
    d = _driver(
        cluster.address,
        f"""
        @skate.remote
        def big():
            return b"w" * {BIG}

        r = big.remote()
        skate.wait([r])
        print("ready", flush=True)
        time.sleep(600)
        """,
    )
    try:
        assert d.stdout.readline().strip() == "ready"
        wait_for(lambda: _stats()["store"]["objects"] == 1, 15, what="the task's result in the store")
        d.kill()
        d.wait(10)
        wait_for(lambda: _stats()["store"]["objects"] == 0, 15, what="the dead owner's result to be freed")
    finally:
        d.kill()
        d.communicate()


def test_an_interrupted_driver_does_not_leave_its_task_running(cluster, tmp_path):
    skate.init(address=cluster.address)
    pidfile = tmp_path / "pid"
    d = _driver(
        cluster.address,
        f"""
        import signal
        # As in a terminal: a test run started in the background inherits SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        @skate.remote
        def spin():
            open({str(pidfile)!r}, "w").write(str(os.getpid()))
            while True:
                pass

        print("ready", flush=True)
        skate.get(spin.remote())
        """,
    )
    try:
        assert d.stdout.readline().strip() == "ready"
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, what="the task to start")
        worker = int(pidfile.read_text())
        d.send_signal(signal.SIGINT)  # Ctrl-C
        d.wait(30)
        wait_for(lambda: pid_gone(worker), 15, what="the job's running task to be stopped")
        wait_for(lambda: skate.available_resources().get("CPU") == 1.0, 15, what="the CPU to be free")
    finally:
        d.kill()
        d.communicate()


def test_a_drivers_actors_end_with_it_except_detached_ones(cluster):
    cluster.add_node(num_cpus=2)
    skate.init(address=cluster.address, namespace="keep")
    code = textwrap.dedent(
        f"""
        import skate
        skate.init(address={cluster.address!r}, namespace="keep")

        @skate.remote(num_cpus=0)
        class Keeper:
            def pid(self):
                import os
                return os.getpid()

        k = Keeper.options(name="k", lifetime="detached").remote()
        mine = Keeper.remote()
        print(skate.get(k.pid.remote()), skate.get(mine.pid.remote()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    detached, owned = (int(x) for x in out.stdout.strip().splitlines()[-1].split())
    wait_for(lambda: pid_gone(owned), 15, what="the driver's own actor to end with it")
    assert not pid_gone(detached)
    k = skate.get_actor("k")
    assert skate.get(k.pid.remote()) == detached
    skate.kill(k)


def test_segments_of_a_sigkilled_node_daemon_are_swept(cluster):
    other = cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)

    @skate.remote(resources={"other": 1})
    def big() -> list:
        return [skate.put(b"s" * BIG)]

    [inner] = skate.get(big.remote())  # kept alive by us: a segment on the other node
    prefix = f"{CONFIG.shm_prefix}-{other.node_id[:12]}"
    assert _segments(prefix)
    cluster.remove_node(other, allow_graceful=False)  # SIGKILL: no clean-up of its own
    assert _segments(prefix), "the segment outlived its daemon (nothing swept yet)"
    assert node.sweep_dead_stores() >= 1
    assert not _segments(prefix)
    del inner


def test_a_sweep_leaves_live_node_daemons_alone(cluster):
    other = cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)

    @skate.remote(resources={"other": 1})
    def big() -> list:
        return [skate.put(b"s" * BIG)]

    [inner] = skate.get(big.remote())
    prefix = f"{CONFIG.shm_prefix}-{other.node_id[:12]}"
    assert _segments(prefix)
    # The daemon runs under its title (skate::raylet), not its module's command line.
    assert node.sweep_dead_stores() == 0
    assert _segments(prefix)
    assert len(skate.get(inner)) == BIG
    del inner


def test_short_drivers_on_a_long_lived_cluster_leave_no_segments(cluster):
    skate.init(address=cluster.address)
    before = _stats()["store"]["objects"]
    for i in range(3):
        d = _driver(
            cluster.address,
            f"""
            @skate.remote
            def big(i):
                return bytes([i]) * {BIG}

            kept = [skate.put(b"p" * {BIG}), big.remote({i})]
            skate.wait(kept[1:])
            print("exiting", flush=True)
            """,  # exits holding its refs: nothing freed them before it went
        )
        out, err = d.communicate(timeout=60)
        assert "exiting" in out, err
    wait_for(lambda: _stats()["store"]["objects"] == before, 15, what="the drivers' objects to be freed")


def test_segments_of_an_embedded_node_daemon_killed_before_shutdown_are_swept():
    """``shutdown()`` of a local cluster whose node daemon was SIGKILLed removes
    the daemon's segments with the session folder (which held their only record)."""
    from skate._private import api

    skate.init(num_cpus=1)
    try:
        keep = skate.put(b"k" * BIG)
        prefix = f"{CONFIG.shm_prefix}-{runtime.current().node_id.hex()[:12]}"
        assert _segments(prefix)
        [raylet] = [d for d in api._head["processes"] if d.name == "node daemon"]
        raylet.proc.send_signal(signal.SIGKILL)
        raylet.proc.wait(timeout=10)
        assert _segments(prefix), "the segment outlived its daemon (nothing swept yet)"
        del keep
    finally:
        skate.shutdown()
    assert not _segments(prefix)


@pytest.mark.timeout(60)
def test_a_daemon_takes_its_signal_handlers_down_before_its_loop_closes():
    """A signal that came while the loop closed its wake-up pipe, with the
    handlers still up, printed "Exception ignored ... Bad file descriptor"
    (seen when a cluster shut down)."""
    script = textwrap.dedent("""
        import signal
        from skate._private import daemon

        real = daemon.new_loop
        def new_loop():
            loop = real()
            close = loop.close
            def checked_close():
                print("at close:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
                close()
            loop.close = checked_close
            return loop
        daemon.new_loop = new_loop

        async def main(stop):
            pass

        daemon.run(main)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "at close: True" in out.stdout, out.stdout + out.stderr
