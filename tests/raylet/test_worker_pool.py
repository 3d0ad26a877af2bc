"""The worker pool under bursts, and a zygote that dies."""

from __future__ import annotations

import psutil
import pytest
from conftest import pid_gone, wait_for

import skate


@skate.remote(num_cpus=0)
class Pinger:
    def ping(self):
        return 1


def _raylet() -> psutil.Process:
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("skate::raylet"):
                return p
        except psutil.NoSuchProcess:
            pass
    raise AssertionError("no node daemon among this test's processes")


@pytest.mark.timeout(120)
def test_a_burst_of_200_actor_creations_on_one_node(ray_start):
    # Creations used to fail with BlockingIOError when the zygote's socket was
    # full, after which the zygote was lost for every later creation.
    actors = [Pinger.remote() for _ in range(200)]
    assert sum(skate.get([a.ping.remote() for a in actors], timeout=90)) == 200
    for a in actors:
        skate.kill(a)


@pytest.mark.timeout(60)
def test_a_dead_zygote_is_replaced(ray_start):
    first = Pinger.remote()
    assert skate.get(first.ping.remote()) == 1
    zygotes = _raylet().children()  # workers are the zygote's children
    assert len(zygotes) == 1, zygotes
    zygotes[0].kill()
    wait_for(lambda: pid_gone(zygotes[0].pid), 10, what="the zygote to exit")
    # Later creations get a new zygote.
    later = [Pinger.remote() for _ in range(3)]
    assert skate.get([a.ping.remote() for a in later], timeout=30) == [1, 1, 1]



# --- which worker a lease may get (like Ray's pool: job, runtime_env, GPU use, actor use) -------
def test_fits_rules_without_a_cluster():
    from skate._private.raylet.worker_pool import WorkerTags, fits, tags_of_request

    fresh = WorkerTags()
    cpu_task = tags_of_request({"resources": {"CPU": 1.0}, "job": 1}, None)
    gpu_task = tags_of_request({"resources": {"CPU": 1.0, "GPU": 0.5}, "job": 1}, None)
    actor = tags_of_request({"resources": {}, "job": 1, "actor_id": b"a"}, None)
    env_task = tags_of_request({"resources": {"CPU": 1.0}, "job": 1}, "h1")
    assert gpu_task.gpu and not cpu_task.gpu and actor.actor and not cpu_task.actor
    # A fresh worker (default environment) takes any lease of the default environment.
    for want in (cpu_task, gpu_task, actor):
        assert fits(fresh, want)
    assert not fits(fresh, env_task)  # its environment is fixed when it starts
    assert fits(WorkerTags(env="h1"), env_task) and not fits(WorkerTags(env="h1"), cpu_task)
    used = WorkerTags(job=1, gpu=False, actor=False)  # ran a CPU task of job 1
    assert fits(used, cpu_task)
    assert not fits(used, gpu_task)  # GPU and non-GPU work stay apart
    assert not fits(used, actor)  # a task worker never hosts an actor
    assert not fits(used, tags_of_request({"resources": {"CPU": 1.0}, "job": 2}, None))  # nor another job's work
    assert not fits(WorkerTags(job=1, gpu=True, actor=False), cpu_task)
    # Custom resources do not split the pool (as in Ray).
    assert fits(used, tags_of_request({"resources": {"CPU": 1.0, "disk": 1.0}, "job": 1}, None))


@skate.remote(num_gpus=0.5, max_calls=0)
def gpu_pid():
    import os

    return os.getpid(), skate.get_runtime_context().get_assigned_resources()


@skate.remote
def cpu_pid():
    import os

    return os.getpid()


@skate.remote
class Holder:
    def pid(self):
        import os

        return os.getpid()


def test_gpu_tasks_cpu_tasks_and_actors_never_share_a_worker():
    skate.init(num_cpus=2, num_gpus=1)
    try:
        cpu = {skate.get(cpu_pid.remote()) for _ in range(4)}
        gpu = set()
        for _ in range(4):
            p, res = skate.get(gpu_pid.remote())
            gpu.add(p)
            assert res == {"CPU": 1.0, "GPU": 0.5}  # fractions assigned exactly
        assert not cpu & gpu
        # Each side still reuses its own workers.
        assert len(gpu) <= 2 and len(cpu) <= 2
        h = Holder.remote()
        assert skate.get(h.pid.remote()) not in cpu | gpu
        skate.kill(h)
    finally:
        skate.shutdown()


def test_idle_workers_of_other_kinds_make_room(ray_start):
    # Two CPUs: at most about two idle workers stay; asking for many other
    # environments in turn does not pile up idle processes.
    pids = set()
    for i in range(6):
        pids.add(skate.get(cpu_pid.options(runtime_env={"env_vars": {"ROOM": str(i)}}).remote()))
    assert len(pids) == 6
    raylet = _raylet()
    wait_for(lambda: len([c for c in raylet.children(recursive=True) if c.pid in pids and c.is_running()]) <= 3,
             20, what="idle workers of other environments to be stopped")
