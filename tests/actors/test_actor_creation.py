"""Actor creation owned by the control store: pipelined, tracked, and not tied to its creator.

The control store leases the worker and runs the constructor; the owner
only registers the actor and hands the creation over, so creating many
actors costs no blocking round trip each.
"""

from __future__ import annotations

import os

import pytest
from conftest import pid_gone, wait_for

import skate
from skate._private import runtime
from skate.exceptions import ActorDiedError


@skate.remote(num_cpus=0)
class Pid:
    def __init__(self, log=None):
        if log:
            with open(log, "a") as f:
                f.write("init\n")

    def pid(self):
        return os.getpid()


def _records(handles) -> list[dict]:
    core = runtime.current()
    return [core.gcs_call("get_actor", {"actor_id": h._actor_id}) for h in handles]


def test_anonymous_creations_make_no_blocking_control_store_call(ray_start, monkeypatch):
    core = runtime.current()

    def refused(*a, **k):
        raise AssertionError("a blocking control-store call while creating an anonymous actor")

    monkeypatch.setattr(core, "gcs_call", refused)
    actors = [Pid.remote() for _ in range(30)]
    monkeypatch.undo()
    pids = skate.get([a.pid.remote() for a in actors], timeout=120)
    assert len(set(pids)) == 30
    records = _records(actors)
    # The control store placed and tracks each one: its worker, node and incarnation.
    assert all(r["state"] == "ALIVE" and r["num_restarts"] == 0 for r in records)
    assert sorted(r["pid"] for r in records) == sorted(pids)


def test_a_named_actor_whose_name_is_taken_is_refused_at_once(ray_start):
    a = Pid.options(name="taken").remote()
    skate.get(a.pid.remote(), timeout=60)
    with pytest.raises(ValueError, match="taken"):
        Pid.options(name="taken").remote()


def test_a_handle_passed_on_at_once_finds_the_actor(ray_start):
    # The handle may reach another process before the owner's registration
    # reaches the control store: the lookup waits for it (bounded).
    @skate.remote
    def call(h):
        return skate.get(h.pid.remote(), timeout=60)

    actors = [Pid.remote() for _ in range(10)]
    pids = skate.get([call.remote(a) for a in actors], timeout=120)
    assert pids == skate.get([a.pid.remote() for a in actors], timeout=60)


def test_killing_an_actor_in_its_constructor_ends_its_process(ray_start, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")

    @skate.remote
    class Slow:
        def __init__(self):
            import time

            with open(started + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(started + ".tmp", started)  # (whole, once it exists)
            while not os.path.exists(gate):
                time.sleep(0.005)

        def ping(self):
            return 1

    a = Slow.remote()
    wait_for(lambda: os.path.exists(started), 60, what="the constructor to start")
    pid = int(open(started).read())
    skate.kill(a)
    wait_for(lambda: pid_gone(pid), 20, what="the half-built actor's process to end")
    with pytest.raises(ActorDiedError, match="kill"):
        skate.get(a.ping.remote(), timeout=20)
    assert _records([a])[0]["state"] == "DEAD"


def test_a_constructor_that_kills_its_process_is_not_run_again_without_restarts(ray_start, tmp_path):
    log = str(tmp_path / "log")

    @skate.remote
    class Dies:
        def __init__(self):
            with open(log, "a") as f:
                f.write("init\n")
            os._exit(1)

        def ping(self):
            return 1

    a = Dies.remote()
    with pytest.raises(ActorDiedError):
        skate.get(a.ping.remote(), timeout=60)
    assert open(log).read().split() == ["init"]
