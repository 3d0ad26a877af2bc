"""Remote functions end to end: arguments, returns, options, nesting, waiting,
cancellation, retries and worker crashes, on a real local cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import cloudpickle
import pytest
from conftest import run_in_threads, wait_for, wait_printed

import skate
from skate import exceptions as exc

# Workers cannot import this test module: ship its helpers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _bump(path) -> int:
    """Increments a counter kept in a file; returns the new value (one writer at a time)."""
    try:
        with open(path) as f:
            n = int(f.read() or 0)
    except FileNotFoundError:
        n = 0
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


def _read_count(path) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


def _wait_file(path, timeout: float = 20.0) -> bool:
    """Inside a task: polls for ``path`` with a deadline."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@skate.remote
def blocked(path):
    """A task that returns once ``path`` exists (the test opens the gate)."""
    return _wait_file(path)


# --- arguments and returns -------------------------------------------------------------


def test_arguments(ray_start):
    @skate.remote
    def add(a, b):
        return a + b

    @skate.remote
    def f(a, b=2, *, c=3, **rest):
        return (a, b, c, rest)

    @skate.remote
    def inc(x):
        return x + 1

    # By value and by ObjectRef.
    assert skate.get(add.remote(1, 2)) == 3
    ref = skate.put(10)
    assert skate.get(add.remote(ref, 5)) == 15
    assert skate.get(add.remote(ref, ref)) == 20
    assert skate.get(add.remote("a", "b")) == "ab"
    # Keyword arguments and defaults; an ObjectRef keyword argument is resolved too.
    assert skate.get(f.remote(1)) == (1, 2, 3, {})
    assert skate.get(f.remote(1, c=30, b=20, d=4)) == (1, 20, 30, {"d": 4})
    seven = skate.put(7)
    assert skate.get(f.remote(a=seven, c=seven)) == (7, 2, 7, {})
    # A chain of tasks, each taking the previous one's result.
    ref = skate.put(0)
    for _ in range(10):
        ref = inc.remote(ref)
    assert skate.get(ref) == 10


@pytest.mark.timeout(60)
def test_thousands_of_returns_from_one_task(ray_start):
    # More return values than one sendmsg takes pieces (IOV_MAX): this hung.
    @skate.remote
    def many(n):
        return list(range(n))

    for n in (1025, 3000):
        refs = many.options(num_returns=n).remote(n)
        assert skate.get(refs, timeout=30) == list(range(n))


def test_num_returns(ray_start, tmp_path):
    marker = tmp_path / "ran"

    @skate.remote(num_returns=2)
    def two():
        return 1, 2

    @skate.remote(num_returns=0)
    def side_effect(path):
        with open(path, "w") as f:
            f.write("ran")

    @skate.remote(num_returns=1)
    def one():
        return (1, 2)

    @skate.remote(num_return_vals=3)
    def three():
        return "a", "b", "c"

    @skate.remote(num_returns=2)
    def bad():
        return 1, 2, 3

    a, b = two.remote()
    assert isinstance(a, skate.ObjectRef) and isinstance(b, skate.ObjectRef)
    assert skate.get([a, b]) == [1, 2]
    assert skate.get(one.remote()) == (1, 2)
    # num_returns=0: nothing to get, but the task runs.
    assert side_effect.remote(str(marker)) is None
    wait_for(marker.exists, 20, what="the num_returns=0 task to run")
    # The legacy name.
    refs = three.remote()
    assert len(refs) == 3
    assert skate.get(refs) == ["a", "b", "c"]
    assert skate.get(one.options(num_return_vals=2).remote()) == [1, 2]
    # Returning the wrong number of values is an error.
    x, _ = bad.remote()
    with pytest.raises(exc.RayTaskError):
        skate.get(x)


def test_options_override(ray_start):
    @skate.remote
    def f():
        return (1, 2)

    assert skate.get(f.remote()) == (1, 2)
    refs = f.options(num_returns=2).remote()
    assert skate.get(refs) == [1, 2]
    # options() does not change the function itself.
    assert skate.get(f.remote()) == (1, 2)
    # Chained options merge.
    refs = f.options(num_cpus=0.5).options(num_returns=2, name="renamed").remote()
    assert skate.get(refs) == [1, 2]
    # All of the node's CPUs.
    assert skate.get(f.options(num_cpus=2).remote(), timeout=30) == (1, 2)


def test_calling_remote_function_directly_raises():
    @skate.remote
    def f(x):
        return x

    with pytest.raises(TypeError, match=r"remote\(\)"):
        f(1)


def test_invalid_options():
    with pytest.raises(ValueError):

        @skate.remote(resources={"CPU": 1})
        def f():
            return 1

    with pytest.raises(ValueError):

        @skate.remote(resources={"GPU": 1})
        def g():
            return 1

    @skate.remote
    def h():
        return 1

    with pytest.raises(ValueError):
        h.options(not_an_option=1)
    with pytest.raises(ValueError):
        h.options(num_returns=-1)
    with pytest.raises(ValueError):
        h.options(num_cpus=-1)
    with pytest.raises(ValueError):
        h.options(max_retries=-5)
    with pytest.raises(TypeError):
        skate.remote(1, 2)


# --- nesting and parallelism --------------------------------------------------------------


def test_nested_tasks_do_not_deadlock(ray_start):
    @skate.remote
    def fib(n):
        if n < 2:
            return n
        return sum(skate.get([fib.remote(n - 1), fib.remote(n - 2)]))

    @skate.remote
    def leaf(x):
        return x * 2

    @skate.remote
    def parent(n):
        return skate.get([leaf.remote(i) for i in range(n)])

    # Every non-leaf call blocks in get() while holding a CPU; on 2 CPUs this
    # only finishes if a blocked get lends its CPU out.
    assert skate.get(fib.remote(8), timeout=90) == 21
    assert skate.get(parent.remote(5), timeout=60) == [0, 2, 4, 6, 8]


def test_tasks_run_in_parallel(ray_start, tmp_path):
    @skate.remote
    def meet(mine, theirs):
        with open(mine, "w") as f:
            f.write("here")
        return _wait_file(theirs)

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    refs = [meet.remote(a, b), meet.remote(b, a)]
    assert skate.get(refs, timeout=60) == [True, True]


# --- get / wait -----------------------------------------------------------------------------


def test_get_list(ray_start):
    @skate.remote
    def sq(x):
        return x * x

    refs = [sq.remote(i) for i in range(10)]
    assert skate.get(refs) == [i * i for i in range(10)]
    assert skate.get([]) == []
    assert skate.get(tuple(refs[:2])) == [0, 1]
    with pytest.raises((TypeError, ValueError)):
        skate.get(1)
    with pytest.raises((TypeError, ValueError)):
        skate.get([skate.put(1), 2])


def test_get_timeout(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    ref = blocked.remote(gate)
    t0 = time.monotonic()
    with pytest.raises(exc.GetTimeoutError) as info:
        skate.get(ref, timeout=0.3)
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, exc.RayError)
    with pytest.raises(TimeoutError):
        skate.get([skate.put(1), ref], timeout=0.05)
    open(gate, "w").close()
    assert skate.get(ref, timeout=30) is True


def test_wait(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    @skate.remote
    def quick(x):
        return x

    slow = blocked.remote(gate)
    a, b, c = quick.remote(1), quick.remote(2), quick.remote(3)
    skate.get([a, b, c])
    refs = [c, slow, a, b]
    ready, not_ready = skate.wait(refs, num_returns=3, timeout=10)
    # Ready refs keep the order they had in the input.
    assert ready == [c, a, b]
    assert not_ready == [slow]

    ready, not_ready = skate.wait(refs, num_returns=1)
    assert ready == [c]
    assert not_ready == [slow, a, b]

    t0 = time.monotonic()
    ready, not_ready = skate.wait([slow], timeout=0.2)
    assert (ready, not_ready) == ([], [slow])
    assert time.monotonic() - t0 < 10

    ready, not_ready = skate.wait(refs, num_returns=4, timeout=0.1)
    assert ready == [c, a, b] and not_ready == [slow]

    open(gate, "w").close()
    ready, not_ready = skate.wait(refs, num_returns=4, timeout=30)
    assert ready == refs and not_ready == []


def test_wait_blocks_until_enough_complete(ray_start, tmp_path):
    gates = [str(tmp_path / f"g{i}") for i in range(3)]

    refs = [blocked.remote(g) for g in gates]
    opener = threading.Timer(0.2, lambda: [open(g, "w").close() for g in gates[1:]])
    opener.start()
    # Sleeps through the first, unrelated completions until two are ready.
    ready, not_ready = skate.wait(refs, num_returns=2, timeout=30)
    opener.join()
    assert ready == refs[1:] and not_ready == refs[:1]
    open(gates[0], "w").close()
    assert skate.get(refs) == [True, True, True]


def test_wait_on_refs_owned_by_another_process(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    @skate.remote
    def make(path):
        # The refs this returns are owned by this task's worker, not the driver.
        return [skate.put("here"), blocked.remote(path)]

    here, later = skate.get(make.remote(gate))
    ready, not_ready = skate.wait([later, here], num_returns=1, timeout=30)
    assert ready == [here] and not_ready == [later]
    ready, not_ready = skate.wait([later], timeout=0.2)
    assert ready == []
    threading.Timer(0.2, lambda: open(gate, "w").close()).start()
    ready, _ = skate.wait([later, here], num_returns=2, timeout=30)
    assert ready == [later, here]


def test_wait_one_at_a_time_over_many_refs(ray_start):
    @skate.remote
    def value(i):
        return i

    refs = [value.remote(i) for i in range(300)]
    seen = []
    while refs:
        ready, refs = skate.wait(refs, timeout=30)
        assert len(ready) == 1
        seen.append(skate.get(ready[0]))
    assert sorted(seen) == list(range(300))


def test_wait_errors(ray_start):
    r = skate.put(1)
    with pytest.raises(ValueError):
        skate.wait([r, r])
    with pytest.raises(ValueError):
        skate.wait([r], num_returns=2)
    with pytest.raises(TypeError):
        skate.wait(r)
    # num_returns defaults to 1.
    refs = [skate.put(i) for i in range(3)]
    ready, not_ready = skate.wait(refs)
    assert ready == [refs[0]]
    assert not_ready == refs[1:]


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_queued_task(ray_start, tmp_path):
    gate = str(tmp_path / "gate")

    running = [blocked.remote(gate), blocked.remote(gate)]  # both CPUs busy
    queued = blocked.remote(gate)
    skate.cancel(queued)
    with pytest.raises(exc.TaskCancelledError) as info:
        skate.get(queued, timeout=30)
    # The message names the task once (not wrapped twice on its way back).
    assert str(info.value).count("cancelled") == 1, str(info.value)
    open(gate, "w").close()
    assert skate.get(running, timeout=30) == [True, True]
    # Cancelling a finished task changes nothing.
    skate.cancel(running[0])
    assert skate.get(running[0]) is True
    with pytest.raises(TypeError):
        skate.cancel("not a ref")


def test_cancel_running_task(ray_start, tmp_path):
    started = tmp_path / "started"

    @skate.remote
    def spin(path):
        with open(path, "w") as f:
            f.write("x")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "finished"

    ref = spin.remote(str(started))
    wait_for(started.exists, 20, what="the task to start")
    skate.cancel(ref)
    with pytest.raises(exc.TaskCancelledError) as info:
        skate.get(ref, timeout=30)
    assert str(info.value).count("cancelled") == 1, str(info.value)

    # The worker is still usable afterwards.
    @skate.remote
    def f():
        return 1

    assert skate.get(f.remote(), timeout=30) == 1


# --- futures ---------------------------------------------------------------------------------


def test_futures(ray_start):
    @skate.remote
    def f(x):
        return x * 3

    @skate.remote
    def bad():
        raise KeyError("from the future")

    async def main():
        a = await f.remote(2)
        b = await skate.put("v")
        both = await asyncio.gather(f.remote(1), f.remote(5))
        return a, b, both

    # ``await ref`` in asyncio code.
    assert asyncio.run(main()) == (6, "v", [3, 15])

    async def awaits_error():
        await bad.remote()

    with pytest.raises(KeyError):
        asyncio.run(awaits_error())
    # ``ref.future()``: a concurrent.futures.Future.
    assert f.remote(1).future().result(timeout=30) == 3
    with pytest.raises(KeyError, match="from the future"):
        bad.remote().future().result(timeout=30)


# --- workers and runtime context ------------------------------------------------------------


def test_sync_tasks_are_read_by_the_waiting_thread(ray_start):
    @skate.remote
    def square(x):
        return x * x

    assert [skate.get(square.remote(i)) for i in range(50)] == [i * i for i in range(50)]
    core = skate._private.runtime.current()
    leased = [lease.conn for ks in core.submitter.keys.values() for lease in ks.leases]
    assert any(conn.led for conn in leased), "no get() read a task's reply itself"


def test_sync_tasks_from_many_threads(ray_start):
    @skate.remote
    def echo(x):
        return x


    def caller(k):
        for i in range(100):
            assert skate.get(echo.remote((k, i)), timeout=30) == (k, i)

    run_in_threads(caller, 4)


def test_hard_affinity_to_a_node_that_can_never_fit_fails(ray_start):
    from skate.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @skate.remote(num_cpus=64)
    def huge():
        return 1

    here = skate.get_runtime_context().get_node_id()
    hard = huge.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    with pytest.raises(exc.TaskUnschedulableError, match="never"):
        skate.get(hard.remote(), timeout=30)

    @skate.remote
    class Huge:
        pass

    actor = Huge.options(num_cpus=64, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    with pytest.raises(exc.ActorUnschedulableError):
        skate.get(actor.__ray_ready__.remote(), timeout=30)


def test_max_calls_one_uses_a_new_worker_each_time(ray_start):
    @skate.remote(max_calls=1)
    def pid():
        return os.getpid()

    pids = [skate.get(pid.remote(), timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3
    assert os.getpid() not in pids

    # Without max_calls the workers are reused.
    @skate.remote
    def reused():
        return os.getpid()

    assert len({skate.get(reused.remote()) for _ in range(10)}) <= 2


def test_runtime_context_in_task(ray_start):
    @skate.remote
    def ctx():
        c = skate.get_runtime_context()
        return c.get_task_id(), c.get_node_id(), c.get_job_id(), c.get_actor_id()

    driver = skate.get_runtime_context()
    tid1, node, job, actor = skate.get(ctx.remote())
    tid2, *_ = skate.get(ctx.remote())
    assert tid1 is not None and tid2 is not None and tid1 != tid2
    assert node == driver.get_node_id()
    assert job == driver.get_job_id()
    assert actor is None
    assert driver.get_actor_id() is None


def test_infeasible_task_warns_and_stays_pending(ray_start, capfd):
    @skate.remote(resources={"no_such_thing": 1})
    def f():
        return 1

    ref = f.remote()
    _, err = wait_printed(capfd, "no_such_thing", 20)
    assert "no_such_thing" in err
    ready, not_ready = skate.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]


# --- retries and crashes ----------------------------------------------------------------------


def test_retry_exceptions(ray_start, tmp_path):
    @skate.remote(retry_exceptions=True, max_retries=3)
    def flaky(path):
        if _bump(path) < 3:
            raise ValueError("not yet")
        return "ok"

    @skate.remote(retry_exceptions=True, max_retries=1)
    def always(path):
        _bump(path)
        raise ValueError("always")

    @skate.remote(retry_exceptions=[KeyError], max_retries=3)
    def wrong_kind(path):
        _bump(path)
        raise ValueError("not retried")

    @skate.remote(max_retries=3)
    def app_error(path):
        _bump(path)
        raise ValueError("once")

    # Fails twice, succeeds on the third run.
    c1 = str(tmp_path / "c1")
    assert skate.get(flaky.remote(c1), timeout=60) == "ok"
    assert _read_count(c1) == 3
    # Retries run out: the last error is raised.
    c2 = str(tmp_path / "c2")
    with pytest.raises(ValueError, match="always"):
        skate.get(always.remote(c2), timeout=60)
    assert _read_count(c2) == 2
    # Only the listed exception classes are retried.
    c3 = str(tmp_path / "c3")
    with pytest.raises(ValueError):
        skate.get(wrong_kind.remote(c3), timeout=60)
    assert _read_count(c3) == 1
    # Without retry_exceptions, max_retries covers worker deaths only.
    c4 = str(tmp_path / "c4")
    with pytest.raises(ValueError):
        skate.get(app_error.remote(c4), timeout=60)
    assert _read_count(c4) == 1


def test_worker_exit_is_retried(ray_start, tmp_path):
    @skate.remote(max_retries=2)
    def dies_twice(path):
        if _bump(path) <= 2:
            os._exit(1)
        return "survived"

    @skate.remote(max_retries=1)
    def always_dies(path):
        _bump(path)
        os._exit(1)

    c1 = str(tmp_path / "c1")
    assert skate.get(dies_twice.remote(c1), timeout=60) == "survived"
    assert _read_count(c1) == 3
    c2 = str(tmp_path / "c2")
    with pytest.raises(exc.WorkerCrashedError) as info:
        skate.get(always_dies.remote(c2), timeout=60)
    assert "code 1" in str(info.value)
    assert _read_count(c2) == 2


def test_worker_crash_errors(ray_start):
    @skate.remote(max_retries=0)
    def exits():
        os._exit(3)

    @skate.remote(max_retries=0)
    def killed():
        os.kill(os.getpid(), signal.SIGKILL)

    @skate.remote
    def ok():
        return 1

    with pytest.raises(exc.WorkerCrashedError, match="code 3"):
        skate.get(exits.remote(), timeout=60)
    with pytest.raises(exc.WorkerCrashedError, match="SIGKILL"):
        skate.get(killed.remote(), timeout=60)
    # The cluster keeps working.
    assert skate.get(ok.remote(), timeout=30) == 1


def _raylet_stats() -> dict:
    from skate._private import runtime

    core = runtime.current()

    async def go() -> dict:
        return await core.raylet.request("node_stats")

    return core.call(go(), timeout=10)


def test_lease_requests_no_longer_needed_are_cancelled_not_granted_later(ray_start):
    """A burst asks for up to 16 leases while only 2 CPUs exist; once its queue
    is empty the requests still waiting are cancelled (as Ray does), so no
    worker is leased after the burst for nothing."""

    @skate.remote
    def work(i: int) -> int:
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass
        return i

    assert skate.get([work.remote(i) for i in range(60)], timeout=60) == list(range(60))
    granted = _raylet_stats()["leases_granted"]
    wait_for(lambda: not _raylet_stats()["demands"], 10, what="no lease request to be left waiting")
    assert _raylet_stats()["leases_granted"] == granted, "a request was granted after the burst had ended"
    # The cancelled requests leave nothing behind: the next burst runs as before.
    assert skate.get([work.remote(i) for i in range(10)], timeout=60) == list(range(10))
