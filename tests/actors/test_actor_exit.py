"""How actors end: exit_actor, __ray_terminate__, __ray_shutdown__ and atexit, kill.

Follows Ray: a graceful end (exit_actor, __ray_terminate__, every handle
gone, the driver's shutdown) runs the actor's ``__ray_shutdown__`` and its
``atexit`` handlers once; ``kill`` runs neither.
"""

from __future__ import annotations

import asyncio
import atexit
import os

import pytest
from conftest import pid_gone, wait_for

import skate
from skate.actor import exit_actor
from skate.exceptions import ActorDiedError, AsyncioActorExit, RayActorError


def _mark(path, text="x"):
    with open(path, "a") as f:
        f.write(text)


@skate.remote
class Hooked:
    def __init__(self, d):
        self.d = d
        atexit.register(_mark, os.path.join(d, "atexit"))

    def __ray_shutdown__(self):
        _mark(os.path.join(self.d, "shutdown"))

    def exit(self):
        exit_actor()
        _mark(os.path.join(self.d, "after"))

    def exit_caught(self):
        try:
            exit_actor()
        except SystemExit:
            pass
        return "returned anyway"

    def ping(self):
        return "pong"

    def pid(self):
        return os.getpid()

    def touch(self):
        _mark(os.path.join(self.d, "touched"))


def _read(d, name):
    p = os.path.join(d, name)
    return open(p).read() if os.path.exists(p) else ""


def test_exit_actor_outside_an_actor_raises_type_error(ray_start):
    with pytest.raises(TypeError, match="exit_actor API is called on a non-actor worker"):
        exit_actor()

    @skate.remote
    def task():
        exit_actor()

    with pytest.raises(TypeError, match="exit_actor API is called on a non-actor worker"):
        skate.get(task.remote())


def test_exit_actor_in_a_method_ends_the_actor_and_runs_hooks_once(ray_start, tmp_path):
    d = str(tmp_path)
    a = Hooked.remote(d)
    assert skate.get(a.ping.remote()) == "pong"
    exiting = a.exit.remote()
    queued = [a.touch.remote() for _ in range(20)]
    with pytest.raises(RayActorError, match=r"exit_actor\(\)"):
        skate.get(exiting)
    for ref in queued:
        with pytest.raises(RayActorError):
            skate.get(ref, timeout=20)
    wait_for(lambda: _read(d, "atexit") == "x" and _read(d, "shutdown") == "x", 20, what="the hooks")
    assert _read(d, "after") == "" and _read(d, "touched") == ""
    with pytest.raises(ActorDiedError):
        skate.get(a.ping.remote(), timeout=20)


def test_exit_actor_still_ends_the_actor_when_user_code_catches_it(ray_start, tmp_path):
    d = str(tmp_path)
    a = Hooked.remote(d)
    skate.get(a.ping.remote())
    with pytest.raises(RayActorError):
        skate.get(a.exit_caught.remote(), timeout=20)
    with pytest.raises(RayActorError):
        skate.get(a.touch.remote(), timeout=20)
    assert _read(d, "touched") == ""


def test_exit_actor_in_the_constructor_exits_after_creation(ray_start, tmp_path):
    d = str(tmp_path)

    @skate.remote
    class Quits:
        def __init__(self):
            atexit.register(_mark, os.path.join(d, "atexit"))
            exit_actor()
            _mark(os.path.join(d, "after"))

        def ping(self):
            return 1

    q = Quits.remote()
    wait_for(lambda: _read(d, "atexit") == "x", 20, what="the atexit handler")
    with pytest.raises(RayActorError, match=r"exit_actor\(\)"):
        skate.get(q.ping.remote(), timeout=20)
    assert _read(d, "after") == ""


def test_exit_actor_in_async_actors_methods_and_background_tasks(ray_start, tmp_path):
    d = str(tmp_path)

    @skate.remote
    class AsyncQuits:
        def __init__(self):
            atexit.register(_mark, os.path.join(d, "atexit"))

        async def exit_caught(self):
            try:
                exit_actor()
            except AsyncioActorExit:
                pass
            return 1

        async def exit_later(self):
            async def later():
                await asyncio.sleep(0.05)
                exit_actor()

            asyncio.get_running_loop().create_task(later())
            return "started"

        async def ping(self):
            return "pong"

    a = AsyncQuits.remote()
    with pytest.raises(RayActorError):
        skate.get(a.exit_caught.remote(), timeout=20)
    with pytest.raises(RayActorError):
        skate.get(a.ping.remote(), timeout=20)
    wait_for(lambda: _read(d, "atexit") == "x", 20, what="the atexit handler")

    b = AsyncQuits.remote()
    assert skate.get(b.exit_later.remote(), timeout=20) == "started"
    wait_for(lambda: _read(d, "atexit") == "xx", 20, what="the second actor's atexit handler")
    with pytest.raises(RayActorError):
        skate.get(b.ping.remote(), timeout=20)


def test_ray_terminate_runs_shutdown_hooks(ray_start, tmp_path):
    d = str(tmp_path)
    a = Hooked.remote(d)
    skate.get(a.ping.remote())
    assert skate.get(a.__ray_terminate__.remote(), timeout=20) is None
    wait_for(lambda: _read(d, "shutdown") == "x" and _read(d, "atexit") == "x", 20, what="the hooks")
    with pytest.raises(RayActorError):
        skate.get(a.ping.remote(), timeout=20)


def test_hooks_run_when_every_handle_is_gone(ray_start, tmp_path):
    d = str(tmp_path)
    a = Hooked.remote(d)
    skate.get(a.ping.remote())
    del a
    wait_for(lambda: _read(d, "shutdown") == "x" and _read(d, "atexit") == "x", 20, what="the hooks")


def test_hooks_run_on_driver_shutdown(tmp_path):
    d = str(tmp_path)
    skate.init(num_cpus=1)
    a = Hooked.remote(d)
    skate.get(a.ping.remote())
    skate.shutdown()
    assert _read(d, "shutdown") == "x" and _read(d, "atexit") == "x"


def test_kill_runs_no_hooks(ray_start, tmp_path):
    d = str(tmp_path)
    a = Hooked.remote(d)
    pid = skate.get(a.pid.remote())
    skate.kill(a)
    with pytest.raises(ActorDiedError):
        skate.get(a.ping.remote(), timeout=20)
    wait_for(lambda: pid_gone(pid), 20, what="the actor's process to end")
    assert _read(d, "shutdown") == "" and _read(d, "atexit") == ""


def test_threaded_actor_exit_lets_running_calls_finish(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    @skate.remote(max_concurrency=2)
    class Threads:
        def long(self, path):
            import time

            _mark(os.path.join(str(tmp_path), "long-started"))
            while not os.path.exists(path):
                time.sleep(0.005)
            return "long-done"

        def quit(self):
            exit_actor()

    t = Threads.remote()
    running = t.long.remote(gate)
    wait_for(lambda: _read(str(tmp_path), "long-started"), 20, what="the long call to start")
    quitting = t.quit.remote()
    with pytest.raises(RayActorError):
        skate.get(quitting, timeout=20)
    later = t.long.remote(gate)  # submitted after the exit: fails
    open(gate, "w").close()
    assert skate.get(running, timeout=20) == "long-done"  # already running: it finished and replied
    with pytest.raises(RayActorError):
        skate.get(later, timeout=20)
