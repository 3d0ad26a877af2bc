"""``get_runtime_context()``: Ray 2.60's RuntimeContext with real values in the driver,
in tasks, and in sync, threaded and async actors."""

from __future__ import annotations

import json

import pytest
from conftest import wait_for

import skate


def _describe() -> dict:
    c = skate.get_runtime_context()
    return {
        "resources": c.get_assigned_resources(),
        "task_name": c.get_task_name(),
        "function_name": c.get_task_function_name(),
        "task_id": c.get_task_id(),
        "actor_id": c.get_actor_id(),
        "actor_name": c.get_actor_name(),
        "job_id": c.get_job_id(),
        "node_id": c.get_node_id(),
        "worker_id": c.get_worker_id(),
        "namespace": c.namespace,
        "pg": c.get_placement_group_id(),
        "accelerators": c.get_accelerator_ids(),
    }


@skate.remote
def describe() -> dict:
    return _describe()


def test_assigned_resources_of_tasks():
    skate.init(num_cpus=4, resources={"custom": 2})
    try:
        assert skate.get(describe.remote())["resources"] == {"CPU": 1.0}  # Ray's default for a task
        assert skate.get(describe.options(num_cpus=2).remote())["resources"] == {"CPU": 2.0}
        got = skate.get(describe.options(num_cpus=0.5, resources={"custom": 0.25}).remote())["resources"]
        assert got == {"CPU": 0.5, "custom": 0.25}
        assert skate.get(describe.options(num_cpus=0).remote())["resources"] == {}
    finally:
        skate.shutdown()


def test_assigned_resources_of_actors():
    skate.init(num_cpus=4, resources={"custom": 2})
    try:

        @skate.remote
        class A:
            def res(self):
                return skate.get_runtime_context().get_assigned_resources()

        assert skate.get(A.remote().res.remote()) == {}  # actors hold no CPU by default, like Ray
        b = A.options(num_cpus=2, resources={"custom": 1.5}).remote()
        assert skate.get(b.res.remote()) == {"CPU": 2.0, "custom": 1.5}
    finally:
        skate.shutdown()


def test_task_and_function_names(ray_start):
    d = skate.get(describe.remote())
    assert d["task_name"] == "describe"
    assert d["function_name"] == f"{__name__}.describe"
    assert skate.get(describe.options(name="custom-name").remote())["task_name"] == "custom-name"
    assert d["actor_id"] is None and d["actor_name"] is None
    assert d["pg"] is None


def test_ids_in_a_task_and_in_the_driver(ray_start):
    ref = describe.remote()
    d = skate.get(ref)
    c = skate.get_runtime_context()
    assert d["task_id"] == ref.task_id().hex()
    assert d["job_id"] == c.get_job_id()
    assert d["node_id"] == c.get_node_id()
    assert d["worker_id"] != c.get_worker_id()
    assert d["namespace"] == c.namespace
    assert c.get_task_id() is None and c.task_id is None
    assert c.get_task_name() is None and c.get_task_function_name() is None
    assert c.get_actor_id() is None and c.get_actor_name() is None
    with pytest.raises(RuntimeError):
        c.current_actor  # noqa: B018
    with pytest.raises(AssertionError):
        c.get_assigned_resources()  # only in a worker, like Ray
    with pytest.raises(RuntimeError):
        c.is_canceled()
    assert c.get_placement_group_id() is None and c.current_placement_group_id is None
    assert c.should_capture_child_tasks_in_placement_group is False
    assert json.loads(c.get_runtime_env_string()) == {} and c.runtime_env == {}
    assert c.get_session_name().startswith("session_")
    assert c.get_temp_dir()
    assert set(c.get()) == {"job_id", "node_id", "namespace"}
    assert c.get_accelerator_ids() == {"GPU": []} or "GPU" in c.get_accelerator_ids()


def test_actor_context(ray_start):
    @skate.remote
    class A:
        def info(self):
            c = skate.get_runtime_context()
            return _describe(), c.was_current_actor_reconstructed, c.current_actor

        def same(self, handle):
            return handle == skate.get_runtime_context().current_actor

    a = A.options(name="alice").remote()
    (d, reconstructed, handle) = skate.get(a.info.remote())
    assert d["actor_id"] == a._ray_actor_id.hex()
    assert d["actor_name"] == "alice"
    assert d["task_name"] == "A.info"
    assert d["function_name"] == f"{__name__}.A.info"
    assert reconstructed is False
    assert handle == a
    assert skate.get(a.same.remote(a)) is True
    assert skate.get(a.info.options(name="renamed").remote())[0]["task_name"] == "renamed"
    unnamed = A.remote()
    assert skate.get(unnamed.info.remote())[0]["actor_name"] == ""


def test_async_actor_context(ray_start):
    @skate.remote
    class B:
        async def info(self):
            c = skate.get_runtime_context()
            with pytest.raises(RuntimeError):
                c.is_canceled()  # not in async actors, like Ray
            return c.get_task_id(), c.get_task_name()

    b = B.remote()
    refs = [b.info.remote() for _ in range(3)]
    got = skate.get(refs)
    assert [g[0] for g in got] == [r.task_id().hex() for r in refs]
    assert {g[1] for g in got} == {"B.info"}


def test_threaded_actor_sees_its_own_task(ray_start):
    @skate.remote(max_concurrency=4)
    class T:
        def tid(self):
            import time

            time.sleep(0.05)
            return skate.get_runtime_context().get_task_id()

    t = T.remote()
    refs = [t.tid.remote() for _ in range(4)]
    assert skate.get(refs) == [r.task_id().hex() for r in refs]


@pytest.mark.timeout(60)
def test_is_canceled_in_a_running_task(ray_start, tmp_path):
    marker = tmp_path / "started"
    result = tmp_path / "result"

    @skate.remote
    def loop(marker, result):
        import time

        open(marker, "w").close()
        try:
            while True:
                time.sleep(0.01)
        except KeyboardInterrupt:
            with open(result, "w") as f:
                f.write(str(skate.get_runtime_context().is_canceled()))
            raise

    ref = loop.remote(str(marker), str(result))
    wait_for(marker.exists, 30, what="the task to start")
    skate.cancel(ref)
    with pytest.raises(skate.exceptions.TaskCancelledError):
        skate.get(ref, timeout=30)
    wait_for(lambda: result.exists() and result.read_text(), 10, what="the task to record is_canceled()")
    assert result.read_text() == "True"

    @skate.remote
    def not_cancelled():
        return skate.get_runtime_context().is_canceled()

    assert skate.get(not_cancelled.remote()) is False


def test_context_in_an_actor_constructor(ray_start):
    @skate.remote
    class C:
        def __init__(self):
            c = skate.get_runtime_context()
            self.seen = (c.get_task_id(), c.get_task_name(), c.get_actor_name(), c.get_assigned_resources())

        def seen_then(self):
            return self.seen, skate.get_runtime_context().get_task_id()

    c = C.options(name="ctor", num_cpus=1).remote()
    (tid, name, actor_name, res), call_tid = skate.get(c.seen_then.remote())
    assert tid is not None and tid != call_tid
    assert name == "ctor:C.__init__"  # Ray's name for a named actor's constructor
    assert actor_name == "ctor"
    assert res == {"CPU": 1.0}


def test_names_of_a_nested_function_and_of_a_script(ray_start, tmp_path):
    """Like Ray: the task name is the function's own name, and a script's functions
    are named after the script's file."""
    import os
    import subprocess
    import sys

    def make():
        @skate.remote
        def inner():
            c = skate.get_runtime_context()
            return c.get_task_name(), c.get_task_function_name()

        return inner

    assert skate.get(make().remote()) == ("inner", f"{__name__}.inner")
    script = tmp_path / "my_job.py"
    script.write_text(
        "import skate\n"
        "@skate.remote\n"
        "def task():\n"
        "    return skate.get_runtime_context().get_task_function_name()\n"
        "skate.init(num_cpus=1)\n"
        "print(skate.get(task.remote()))\n"
        "skate.shutdown()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(skate.__file__)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "my_job.task"
