"""Two races: a GC pass inside the memory store's locked section, and a cancel
that arrives as its task ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import skate

pytestmark = pytest.mark.timeout(120)


def test_a_gc_pass_inside_the_stores_locked_section_does_not_deadlock():
    # In a subprocess: on a store with a non-reentrant lock it hangs for good.
    code = textwrap.dedent(
        """
        import gc, time
        import skate
        from skate._private import runtime

        skate.init(num_cpus=1)
        core = runtime.current_or_none()

        class Cycle:
            pass

        c = Cycle()
        c.me = c
        c.ref = skate.put(b"x" * 400_000)  # its only ref lives in a cycle only the GC frees
        oid = c.ref.binary()
        del c
        with core.store.lock:  # as if a store method were allocating right now
            gc.collect()  # runs ObjectRef.__del__ on this thread, inside the section
        print("no deadlock", flush=True)
        deadline = time.monotonic() + 10
        while core.store.owns(oid):  # the release is applied right after the section
            assert time.monotonic() < deadline, "the queued release was never applied"
            time.sleep(0.01)
        print("released", flush=True)
        skate.shutdown()
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process deadlocked when a GC pass ran inside the store's lock")
    assert "no deadlock" in out.stdout and "released" in out.stdout, out.stderr


def test_cancel_never_interrupts_the_next_task_on_the_same_worker(ray_start):
    import random

    @skate.remote(num_cpus=2)  # one worker, so each task runs right after the previous one
    def quick(s: float) -> None:
        import time

        end = time.perf_counter() + s
        while time.perf_counter() < end:
            pass

    @skate.remote(num_cpus=2)
    def victim() -> str:
        import time

        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
        return "ok"

    rng = random.Random(7)
    for _ in range(60):
        a = quick.remote(rng.uniform(0, 0.004))
        b = victim.remote()
        try:
            skate.wait([a], timeout=rng.uniform(0, 0.004))
        finally:
            skate.cancel(a)
        assert skate.get(b, timeout=30) == "ok"
        try:
            skate.get(a, timeout=30)
        except skate.exceptions.TaskCancelledError:
            pass


def test_a_profiler_started_inside_a_task_works_after_tasks_and_a_cancel(ray_start):
    """Clearing a late interrupt must not leave CPython's pending-exception flag
    raised: with it raised every bytecode check takes the slow path, and a
    profiler or tracer set by user code (cProfile in a task) spins forever."""

    @skate.remote(num_cpus=2)  # one worker for all of them
    def spin_until_cancelled() -> None:
        while True:
            pass

    @skate.remote(num_cpus=2)
    def profiled() -> int:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        total = sum(range(1000))
        prof.disable()
        return total

    assert skate.get([profiled.remote() for _ in range(3)], timeout=30) == [499500] * 3
    ref = spin_until_cancelled.remote()
    skate.wait([ref], timeout=0.3)
    skate.cancel(ref)
    with pytest.raises(skate.exceptions.TaskCancelledError):
        skate.get(ref, timeout=30)
    assert skate.get(profiled.remote(), timeout=30) == 499500

    @skate.remote(num_cpus=2)
    def traced() -> bool:
        import sys

        sys.settrace(lambda *a: None)
        try:
            return sum(range(10)) == 45
        finally:
            sys.settrace(None)

    assert skate.get(traced.remote(), timeout=30) is True


class _SlowToPickle(Exception):
    """An error whose pickling (in the worker's error reply, after the task's
    own code ended) takes long enough for a cancel to arrive meanwhile."""

    def __reduce__(self):
        import os
        import time

        open(os.environ["SKATE_TEST_MARK"], "w").close()
        time.sleep(1.0)
        return (_SlowToPickle, self.args)


def test_a_cancel_arriving_after_the_tasks_code_ended_leaves_the_worker_serving(ray_start, tmp_path, monkeypatch):
    """A cancel that reaches a worker while it builds the reply of a task whose
    code already ended (here: pickling the task's error) does not interrupt
    skate's own code: the task ends with its own outcome and the same worker
    runs the next task."""
    import os

    from conftest import wait_for

    mark = tmp_path / "pickling"
    monkeypatch.setenv("SKATE_TEST_MARK", str(mark))

    @skate.remote(num_cpus=2, max_retries=0, runtime_env={"env_vars": {"SKATE_TEST_MARK": str(mark)}})
    def fails() -> None:
        raise _SlowToPickle("boom")

    @skate.remote(num_cpus=2)
    def pid() -> int:
        return os.getpid()

    first = skate.get(pid.remote())
    ref = fails.remote()
    wait_for(mark.exists, 30, what="the error reply to be under way")
    skate.cancel(ref)
    with pytest.raises((skate.exceptions.RayTaskError, skate.exceptions.TaskCancelledError)) as info:
        skate.get(ref, timeout=30)
    assert not isinstance(info.value, skate.exceptions.WorkerCrashedError)
    assert skate.get(pid.remote(), timeout=30) == first, "the same worker still serves"
