"""Actor restarts and call retries (max_restarts, max_task_retries, retry_exceptions).

The actor's process is really killed (SIGKILL, os._exit, its node daemon
killed); a log file written by the actor counts constructor runs and call
executions, so each test checks what ran, how often, and that no call was lost.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import pid_gone, wait_for

import skate
from skate.exceptions import ActorDiedError, ActorUnavailableError, RayActorError


def _record(a) -> dict:
    from skate._private import runtime

    return runtime.current().gcs_call("get_actor", {"actor_id": a._actor_id})


def _wait_alive(a, incarnation: int) -> None:
    wait_for(
        lambda: (r := _record(a))["state"] == "ALIVE" and r["num_restarts"] >= incarnation,
        30,
        what=f"incarnation {incarnation} to be ALIVE",
    )


def _lines(path) -> list[str]:
    return open(path).read().split() if os.path.exists(path) else []


@skate.remote(max_restarts=1, max_task_retries=-1)
class Logged:
    def __init__(self, log):
        self.log = log
        self.n = 0
        with open(log, "a") as f:
            f.write("init\n")

    def pid(self):
        return os.getpid()

    def reconstructed(self):
        return skate.get_runtime_context().was_current_actor_reconstructed

    def slow(self, gate):
        import time

        with open(self.log, "a") as f:
            f.write("slow\n")
        while not os.path.exists(gate):
            time.sleep(0.005)
        return "slow-done"

    def add(self, i):
        self.n += 1
        with open(self.log, "a") as f:
            f.write(f"add{i}\n")
        return i

    def die(self):
        os._exit(1)


def test_sigkill_mid_call_restarts_retries_once_and_loses_nothing(ray_start, tmp_path):
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    a = Logged.remote(log)
    pid = skate.get(a.pid.remote())
    assert skate.get(a.reconstructed.remote()) is False
    inflight = a.slow.remote(gate)
    wait_for(lambda: "slow" in _lines(log), 20, what="the call to start")
    os.kill(pid, signal.SIGKILL)
    # Calls made while the actor is being restarted wait and run in order.
    during = [a.add.remote(i) for i in range(20)]
    wait_for(lambda: pid_gone(pid), 20, what="the old process to end")
    open(gate, "w").close()
    assert skate.get(inflight, timeout=60) == "slow-done"
    assert skate.get(during, timeout=60) == list(range(20))
    assert skate.get(a.reconstructed.remote()) is True
    assert skate.get(a.pid.remote()) != pid
    lines = _lines(log)
    assert lines.count("init") == 2  # the constructor ran again
    assert lines.count("slow") == 2  # the call in flight was retried once
    assert [ln for ln in lines if ln.startswith("add")] == [f"add{i}" for i in range(20)]  # each once, in order


def test_os_exit_restarts_until_max_restarts_then_dies(ray_start, tmp_path):
    log = str(tmp_path / "log")
    a = Logged.options(max_task_retries=0).remote(log)
    skate.get(a.pid.remote())
    with pytest.raises(ActorUnavailableError):  # restarting; the call had no retries left
        skate.get(a.die.remote(), timeout=30)
    _wait_alive(a, 1)
    assert skate.get(a.add.remote(1), timeout=30) == 1
    assert skate.get(a.reconstructed.remote()) is True
    with pytest.raises(ActorDiedError, match="max_restarts"):  # the only restart is spent
        skate.get(a.die.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        skate.get(a.add.remote(2), timeout=30)
    assert _lines(log).count("init") == 2


def test_max_restarts_minus_one_restarts_forever(ray_start, tmp_path):
    log = str(tmp_path / "log")
    a = Logged.options(max_restarts=-1).remote(log)
    for _ in range(4):
        pid = skate.get(a.pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: pid_gone(pid), 20, what="the process to end")
    assert skate.get(a.add.remote(7), timeout=30) == 7
    assert _lines(log).count("init") == 5


def test_restarting_state_is_visible_in_the_control_store(ray_start, tmp_path):
    from skate._private import runtime

    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")

    @skate.remote(max_restarts=1)
    class SlowStart:
        def __init__(self, log, gate):
            import time

            with open(log, "a") as f:
                f.write("init\n")
            if skate.get_runtime_context().was_current_actor_reconstructed:
                while not os.path.exists(gate):
                    time.sleep(0.005)

        def pid(self):
            return os.getpid()

    a = SlowStart.remote(log, gate)
    pid = skate.get(a.pid.remote())
    core = runtime.current()

    def state():
        return core.gcs_call("get_actor", {"actor_id": a._actor_id})["state"]

    assert state() == "ALIVE"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state() == "RESTARTING", 20, what="the RESTARTING state")
    # Without retries a call fails at once while the actor restarts; with retries it waits (follows Ray).
    wait_for(lambda: a._state.state == "RESTARTING", 20, what="the caller to see the restart")
    with pytest.raises(ActorUnavailableError, match="restarting"):
        skate.get(a.pid.remote(), timeout=30)
    ref = a.pid.options(max_task_retries=1).remote()
    open(gate, "w").close()
    assert skate.get(ref, timeout=30) != pid
    wait_for(lambda: state() == "ALIVE", 20, what="ALIVE again")


def test_callers_holding_a_passed_handle_follow_the_restart(ray_start, tmp_path):
    log = str(tmp_path / "log")
    a = Logged.remote(log)

    @skate.remote
    def use(h, i):
        return skate.get(h.add.remote(i), timeout=60)

    assert skate.get(use.remote(a, 1), timeout=30) == 1
    pid = skate.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid_gone(pid), 20, what="the process to end")
    assert skate.get(use.remote(a, 2), timeout=60) == 2


def test_kill_no_restart_false_restarts_and_true_does_not(ray_start, tmp_path):
    log = str(tmp_path / "log")
    a = Logged.remote(log)
    pid = skate.get(a.pid.remote())
    skate.kill(a, no_restart=False)
    wait_for(lambda: pid_gone(pid), 20, what="the process to end")
    assert skate.get(a.add.remote(3), timeout=30) == 3
    assert _lines(log).count("init") == 2
    skate.kill(a)
    with pytest.raises(ActorDiedError, match="kill"):
        skate.get(a.add.remote(4), timeout=30)


def test_retry_exceptions_per_class_and_per_method(ray_start, tmp_path):
    log = str(tmp_path / "log")

    @skate.remote(max_task_retries=2, retry_exceptions=[KeyError])
    class Flaky:
        def __init__(self):
            self.calls = {}

        def _count(self, key):
            self.calls[key] = self.calls.get(key, 0) + 1
            with open(log, "a") as f:
                f.write(key + "\n")
            return self.calls[key]

        def key_error_twice(self):
            if self._count("k") <= 2:
                raise KeyError("flaky")
            return "ok"

        def value_error(self):
            self._count("v")
            raise ValueError("not retried")

        @skate.method(max_task_retries=1, retry_exceptions=True)
        def any_error_once(self):
            if self._count("m") <= 5:
                raise RuntimeError("still failing")
            return "never"

    f = Flaky.remote()
    assert skate.get(f.key_error_twice.remote(), timeout=30) == "ok"
    with pytest.raises(ValueError):
        skate.get(f.value_error.remote(), timeout=30)
    with pytest.raises(RuntimeError):
        skate.get(f.any_error_once.remote(), timeout=30)
    assert _lines(log).count("v") == 1
    with pytest.raises(ValueError):  # retried max_task_retries (2) times, then raised
        skate.get(f.value_error.options(retry_exceptions=[ValueError]).remote(), timeout=30)
    lines = _lines(log)
    assert lines.count("k") == 3 and lines.count("m") == 2 and lines.count("v") == 4


@skate.remote
class SlowCtor:
    def __init__(self, started, gate):
        import time

        with open(started, "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(gate):
            time.sleep(0.005)

    def ping(self):
        return "pong"


@skate.remote(max_retries=0)
def _creator(name, detached, started, gate):
    o = {"name": name}
    if detached:
        o["lifetime"] = "detached"
    SlowCtor.options(**o).remote(started, gate)
    while not os.path.exists(started):  # the control store runs the constructor now
        time.sleep(0.005)
    os._exit(1)


def _name_free(name):
    try:
        skate.get_actor(name)
    except ValueError:
        return True
    return False


def test_detached_actor_whose_creator_dies_mid_construction_is_still_created(ray_start, tmp_path):
    # The control store owns the creation: the creator's death does not strand it (follows Ray).
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with pytest.raises(Exception):  # noqa: B017 - the creator dies, whatever its error
        skate.get(_creator.remote("orphan", True, started, gate), timeout=60)
    a = skate.get_actor("orphan")
    open(gate, "w").close()
    assert skate.get(a.ping.remote(), timeout=30) == "pong"
    pid = int(open(started).read())
    skate.kill(a)
    wait_for(lambda: pid_gone(pid), 20, what="the killed actor's process to end")
    wait_for(lambda: _name_free("orphan"), 20, what="the name to be freed")


def test_actor_whose_creator_dies_mid_construction_is_cleaned_up(ray_start, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with pytest.raises(Exception):  # noqa: B017 - the creator dies, whatever its error
        skate.get(_creator.remote("owned", False, started, gate), timeout=60)
    pid = int(open(started).read())
    wait_for(lambda: pid_gone(pid), 30, what="the half-built actor's process to be killed")
    wait_for(lambda: _name_free("owned"), 20, what="the name to be freed")


def test_actor_restarts_when_its_node_dies(cluster, tmp_path):
    from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    other = cluster.add_node(num_cpus=1)
    skate.init(address=cluster.address)
    try:
        log = str(tmp_path / "log")

        @skate.remote(num_cpus=0, max_restarts=1, max_task_retries=-1)
        class Where:
            def __init__(self):
                with open(log, "a") as f:
                    f.write("init\n")

            def node(self):
                return skate.get_runtime_context().get_node_id()

            def pid(self):
                return os.getpid()

        a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other.node_id, soft=True)).remote()
        assert skate.get(a.node.remote(), timeout=60) == other.node_id
        pid = skate.get(a.pid.remote(), timeout=60)
        cluster.remove_node(other, allow_graceful=False)
        wait_for(lambda: pid_gone(pid), 30, what="the actor's process to end with its node")
        assert skate.get(a.node.remote(), timeout=60) == cluster.head_node.node_id
        assert _lines(log).count("init") == 2
        assert skate.get(a.node.remote(), timeout=60) == cluster.head_node.node_id
    finally:
        skate.shutdown()


def test_restart_errors_are_actor_errors(ray_start, tmp_path):
    # ActorUnavailableError and ActorDiedError are both RayActorErrors (follows Ray).
    assert issubclass(ActorUnavailableError, RayActorError) and issubclass(ActorDiedError, RayActorError)
