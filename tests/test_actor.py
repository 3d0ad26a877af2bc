"""End-to-end tests of actors: creation, calls, handles, names, failures, resources, output.

Every test runs real worker processes on a local cluster (see conftest.py).
"""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pytest
from conftest import pid_gone, run_in_threads, wait_for, wait_printed

import skate
from skate._private import runtime
from skate._private.core_worker.memory_store import PENDING
from skate.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError


@skate.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def incr(self, by=1):
        self.value += by
        return self.value

    def read(self):
        return self.value

    def pid(self):
        return os.getpid()


# --- basics -------------------------------------------------------------------------


def test_create_call_and_keep_state(ray_start):
    c = Counter.remote()
    assert skate.get(c.incr.remote()) == 1
    assert skate.get(c.incr.remote(5)) == 6
    assert skate.get(c.read.remote()) == 6


def test_calls_from_one_caller_run_in_order(ray_start):
    c = Counter.remote()
    refs = [c.incr.remote() for _ in range(100)]
    assert skate.get(c.read.remote()) == 100
    assert skate.get(refs) == list(range(1, 101))


def test_order_kept_when_an_earlier_call_waits_for_its_argument(ray_start, tmp_path):
    @skate.remote
    class Recorder:
        def __init__(self):
            self.seen = []

        def add(self, x):
            self.seen.append(x)
            return list(self.seen)

    @skate.remote
    def when_file_exists(path, value):
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return value

    gate = tmp_path / "gate"
    r = Recorder.remote()
    first = r.add.remote(when_file_exists.remote(str(gate), "a"))
    second = r.add.remote("b")
    ready, _ = skate.wait([second], timeout=0.5)
    assert ready == []  # held back behind the call whose argument is not ready
    gate.touch()
    assert skate.get(first, timeout=20) == ["a"]
    assert skate.get(second, timeout=20) == ["a", "b"]


def test_several_actors_in_parallel_have_own_state_and_process(ray_start):
    actors = [Counter.remote(i * 100) for i in range(3)]
    refs = [a.incr.remote(i) for i, a in enumerate(actors)]
    assert skate.get(refs) == [0, 101, 202]
    pids = skate.get([a.pid.remote() for a in actors])
    assert len(set(pids)) == 3
    assert os.getpid() not in pids


def test_handle_passed_to_task(ray_start):
    c = Counter.remote()

    @skate.remote
    def use(handle, n):
        return skate.get([handle.incr.remote() for _ in range(n)])[-1]

    assert skate.get(use.remote(c, 5)) == 5
    assert skate.get(c.read.remote()) == 5


def test_handle_passed_to_another_actor(ray_start):
    c = Counter.remote()

    @skate.remote
    class User:
        def __init__(self, counter):
            self.counter = counter

        def bump(self, n):
            for _ in range(n):
                skate.get(self.counter.incr.remote())
            return skate.get(self.counter.read.remote())

        def bump_via(self, other, n):
            return skate.get(other.incr.remote(n))

    u = User.remote(c)
    assert skate.get(u.bump.remote(3)) == 3
    assert skate.get(u.bump_via.remote(c, 10)) == 13
    assert skate.get(c.read.remote()) == 13


def test_handle_passed_nested_in_a_list(ray_start):
    a, b = Counter.remote(), Counter.remote(10)

    @skate.remote
    def use_all(handles):
        return skate.get([h.incr.remote() for h in handles])

    assert skate.get(use_all.remote([a, b])) == [1, 11]
    assert skate.get(use_all.remote({"x": [a, b]}["x"])) == [2, 12]


def test_handle_passed_nested_in_a_dict_to_actor_method(ray_start):
    c = Counter.remote()

    @skate.remote
    class Holder:
        def call(self, d):
            return skate.get(d["inner"][0].incr.remote(7))

    h = Holder.remote()
    assert skate.get(h.call.remote({"inner": [c]})) == 7


# --- num_returns --------------------------------------------------------------------


def test_method_decorator_num_returns(ray_start):
    @skate.remote
    class Splitter:
        @skate.method(num_returns=2)
        def split(self, x):
            return x, x * 2

        def pair(self):
            return 1, 2

    s = Splitter.remote()
    r1, r2 = s.split.remote(3)
    assert skate.get(r1) == 3
    assert skate.get(r2) == 6
    a, b = s.pair.options(num_returns=2).remote()
    assert skate.get([a, b]) == [1, 2]
    # Without options it is one ref holding the tuple.
    assert skate.get(s.pair.remote()) == (1, 2)
    # options can override the decorator too.
    assert skate.get(s.split.options(num_returns=1).remote(4)) == (4, 8)


# --- arguments ----------------------------------------------------------------------


def test_constructor_args_by_value_and_by_ref(ray_start):
    @skate.remote
    class Box:
        def __init__(self, a, b=None, *, c=0):
            self.items = (a, b, c)

        def get(self):
            return self.items

    ref = skate.put({"k": [1, 2]})
    box = Box.remote(1, ref, c=skate.put(3))
    a, b, c = skate.get(box.get.remote())
    assert a == 1
    assert b == {"k": [1, 2]}
    assert c == 3

    @skate.remote
    def make():
        return "from task"

    box2 = Box.remote(make.remote())
    assert skate.get(box2.get.remote())[0] == "from task"


def test_method_args_refs_resolved(ray_start):
    @skate.remote
    class Adder:
        def add(self, x, y):
            return x + y

        def kind(self, x):
            return type(x).__name__

    @skate.remote
    def slow_value(v):
        return v

    a = Adder.remote()
    assert skate.get(a.add.remote(skate.put(2), slow_value.remote(3))) == 5
    assert skate.get(a.kind.remote(skate.put(1))) == "int"
    # A ref nested in a list stays a ref.
    assert skate.get(a.kind.remote([skate.put(1)])) == "list"


def test_method_large_numpy_args_and_returns(ray_start):
    @skate.remote
    class Arr:
        def __init__(self, arr):
            self.base = arr

        def total(self, x):
            return float(x.sum() + self.base.sum())

        def double(self, x):
            return x * 2

    base = np.ones(1_000_000, dtype=np.float64)  # 8 MB
    a = Arr.remote(base)
    x = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    assert skate.get(a.total.remote(x)) == float(x.sum() + base.sum())
    assert skate.get(a.total.remote(skate.put(x))) == float(x.sum() + base.sum())
    out = skate.get(a.double.remote(x))
    np.testing.assert_array_equal(out, x * 2)


# --- concurrency --------------------------------------------------------------------


def test_async_actor_calls_overlap(ray_start):
    @skate.remote
    class AsyncActor:
        def __init__(self):
            import asyncio

            self.event = asyncio.Event()

        async def wait(self):
            await self.event.wait()
            return "done"

        async def set(self):
            self.event.set()
            return "set"

    a = AsyncActor.remote()
    w1, w2 = a.wait.remote(), a.wait.remote()
    ready, _ = skate.wait([w1, w2], num_returns=2, timeout=0.5)
    assert ready == []
    assert skate.get(a.set.remote(), timeout=10) == "set"
    assert skate.get([w1, w2], timeout=10) == ["done", "done"]


def test_async_actor_max_concurrency_one_serializes(ray_start):
    @skate.remote
    class AsyncActor:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def work(self):
            import asyncio

            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(0.05)
            self.running -= 1
            return self.peak

        async def peak_seen(self):
            return self.peak

    a = AsyncActor.options(max_concurrency=1).remote()
    skate.get([a.work.remote() for _ in range(4)], timeout=20)
    assert skate.get(a.peak_seen.remote()) == 1


def test_threaded_actor_max_concurrency(ray_start):
    @skate.remote
    class Threaded:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(2, timeout=10)

        def meet(self):
            import threading

            self.barrier.wait()
            return threading.get_ident()

    t = Threaded.options(max_concurrency=2).remote()
    idents = skate.get([t.meet.remote(), t.meet.remote()], timeout=30)
    assert len(set(idents)) == 2


def test_default_actor_runs_one_call_at_a_time(ray_start):
    @skate.remote
    class Serial:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(2, timeout=1)

        def meet(self):
            import threading

            try:
                self.barrier.wait()
                return "met"
            except threading.BrokenBarrierError:
                return "alone"

    s = Serial.remote()
    assert skate.get([s.meet.remote(), s.meet.remote()], timeout=30) == ["alone", "alone"]


# --- named actors -------------------------------------------------------------------


def test_named_actor_get_actor(ray_start):
    Counter.options(name="counter").remote(5)
    h = skate.get_actor("counter")
    assert skate.get(h.incr.remote()) == 6
    h2 = skate.get_actor("counter")
    assert skate.get(h2.read.remote()) == 6


def test_named_actor_get_actor_from_task(ray_start):
    c = Counter.options(name="shared").remote()
    skate.get(c.read.remote())

    @skate.remote
    def bump():
        return skate.get(skate.get_actor("shared").incr.remote())

    assert skate.get(bump.remote()) == 1
    assert skate.get(c.read.remote()) == 1


def test_named_actor_duplicate_name_raises(ray_start):
    c = Counter.options(name="dup").remote()
    skate.get(c.read.remote())
    with pytest.raises(ValueError):
        Counter.options(name="dup").remote()
    # The first one still works.
    assert skate.get(c.incr.remote()) == 1


def test_named_actor_get_if_exists(ray_start):
    c1 = Counter.options(name="gie", get_if_exists=True).remote(1)
    assert skate.get(c1.incr.remote()) == 2
    c2 = Counter.options(name="gie", get_if_exists=True).remote(100)
    assert skate.get(c2.incr.remote()) == 3
    assert skate.get(c1.pid.remote()) == skate.get(c2.pid.remote())


def test_named_actor_namespaces(ray_start):
    c = Counter.options(name="nsa", namespace="ns1").remote(7)
    skate.get(c.read.remote())
    h = skate.get_actor("nsa", namespace="ns1")
    assert skate.get(h.read.remote()) == 7
    with pytest.raises(ValueError):
        skate.get_actor("nsa", namespace="ns2")
    with pytest.raises(ValueError):
        skate.get_actor("nsa")  # the job's own namespace
    # The same name can be used in another namespace.
    d = Counter.options(name="nsa", namespace="ns2").remote(8)
    assert skate.get(d.read.remote()) == 8
    assert skate.get(skate.get_actor("nsa", namespace="ns2").read.remote()) == 8
    assert skate.get(skate.get_actor("nsa", namespace="ns1").read.remote()) == 7


def test_get_actor_missing_name_raises(ray_start):
    with pytest.raises(ValueError):
        skate.get_actor("no-such-actor")


def test_named_actor_name_free_after_kill(ray_start):
    c = Counter.options(name="reuse").remote()
    skate.get(c.read.remote())
    skate.kill(c)
    wait_for(lambda: _missing("reuse"), 10, what="name to be released")
    c2 = Counter.options(name="reuse").remote(3)
    assert skate.get(c2.read.remote()) == 3


def _missing(name: str) -> bool:
    try:
        skate.get_actor(name)
    except ValueError:
        return True
    return False


# --- errors -------------------------------------------------------------------------


def test_method_exception_reraised_and_actor_survives(ray_start):
    class MyError(Exception):  # defined here so workers unpickle it by value
        pass

    @skate.remote
    class Faulty:
        def __init__(self):
            self.calls = 0

        def fail(self):
            self.calls += 1
            raise MyError("boom in method")

        def count(self):
            return self.calls

    f = Faulty.remote()
    with pytest.raises(MyError) as ei:
        skate.get(f.fail.remote())
    assert isinstance(ei.value, RayTaskError)
    assert "boom in method" in str(ei.value)
    with pytest.raises(RayTaskError):
        skate.get(f.fail.remote())
    assert skate.get(f.count.remote()) == 2


def test_kill_then_call_raises(ray_start):
    c = Counter.remote()
    pid = skate.get(c.pid.remote())
    skate.kill(c)
    with pytest.raises(RayActorError) as ei:
        skate.get(c.read.remote(), timeout=20)
    assert isinstance(ei.value, ActorDiedError)
    assert "kill" in str(ei.value)
    wait_for(lambda: pid_gone(pid),
             15, what="killed actor process to exit")


def test_kill_fails_calls_in_flight(ray_start, tmp_path):
    @skate.remote
    class Blocker:
        def block(self, path):
            open(path, "w").close()
            import time

            while True:
                time.sleep(0.01)

    b = Blocker.remote()
    started = tmp_path / "started"
    ref = b.block.remote(str(started))
    queued = b.block.remote(str(tmp_path / "never"))
    wait_for(started.exists, 20, what="method to start")
    skate.kill(b)
    with pytest.raises(ActorDiedError):
        skate.get(ref, timeout=20)
    with pytest.raises(ActorDiedError):
        skate.get(queued, timeout=20)


def test_kill_via_handle_in_another_task(ray_start):
    c = Counter.remote()
    pid = skate.get(c.pid.remote())

    @skate.remote
    def killer(h):
        skate.kill(h)
        return True

    assert skate.get(killer.remote(c))

    def call_fails():
        try:
            skate.get(c.read.remote(), timeout=20)
        except ActorDiedError:
            return True
        return False

    # skate.kill is asynchronous: the kill lands shortly after the task returns.
    wait_for(call_fails, 15, what="calls to the killed actor to fail")
    wait_for(lambda: pid_gone(pid),
             15, what="killed actor process to exit")


def test_kill_rejects_non_handle(ray_start):
    with pytest.raises(ValueError):
        skate.kill("not an actor")


def test_actor_process_dies(ray_start):
    @skate.remote
    class Fragile:
        def die(self):
            os._exit(1)

        def ping(self):
            return "pong"

        def pid(self):
            return os.getpid()

    f = Fragile.remote()
    assert skate.get(f.ping.remote()) == "pong"
    pid = skate.get(f.pid.remote())
    with pytest.raises(ActorDiedError) as ei:
        skate.get(f.die.remote(), timeout=20)
    assert isinstance(ei.value, RayActorError)
    msg = str(ei.value)
    # The message says why: the worker process (with its pid) died / exited.
    assert "died" in msg or "exit" in msg
    assert str(pid) in msg
    with pytest.raises(ActorDiedError) as ei2:
        skate.get(f.ping.remote(), timeout=20)
    assert "died" in str(ei2.value) or "exit" in str(ei2.value)


def test_constructor_raises(ray_start):
    class MyError(Exception):
        pass

    @skate.remote
    class BadInit:
        def __init__(self):
            raise MyError("constructor exploded")

        def ping(self):
            return "pong"

    b = BadInit.remote()
    with pytest.raises(RayActorError) as ei:
        skate.get(b.ping.remote(), timeout=20)
    assert "constructor exploded" in str(ei.value)
    # Later calls fail the same way.
    with pytest.raises(RayActorError):
        skate.get(b.ping.remote(), timeout=20)


def test_exit_actor(ray_start):
    @skate.remote
    class Quitter:
        def quit(self):
            skate.exit_actor()

        def ping(self):
            return os.getpid()

    q = Quitter.remote()
    pid = skate.get(q.ping.remote())
    quit_ref = q.quit.remote()
    later = q.ping.remote()  # submitted behind quit: never runs
    with pytest.raises(RayActorError):
        skate.get(quit_ref, timeout=20)
    with pytest.raises(RayActorError):
        skate.get(later, timeout=20)
    with pytest.raises(RayActorError):
        skate.get(q.ping.remote(), timeout=20)
    wait_for(lambda: pid_gone(pid),
             15, what="exited actor process to go")


def test_exit_actor_in_async_actor(ray_start):
    @skate.remote
    class AsyncQuitter:
        async def quit(self):
            skate.exit_actor()

        async def ping(self):
            return "pong"

    q = AsyncQuitter.remote()
    assert skate.get(q.ping.remote()) == "pong"
    with pytest.raises(RayActorError):
        skate.get(q.quit.remote(), timeout=20)
    with pytest.raises(RayActorError):
        skate.get(q.ping.remote(), timeout=20)


def test_exit_actor_in_threaded_actor(ray_start):
    @skate.remote
    class ThreadedQuitter:
        def quit(self):
            skate.exit_actor()

        def ping(self):
            return "pong"

    q = ThreadedQuitter.options(max_concurrency=2).remote()
    assert skate.get(q.ping.remote()) == "pong"
    with pytest.raises(RayActorError):
        skate.get(q.quit.remote(), timeout=20)
    with pytest.raises(RayActorError):
        skate.get(q.ping.remote(), timeout=20)


def test_direct_calls_raise_type_error(ray_start):
    with pytest.raises(TypeError):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError):
        c.incr()
    with pytest.raises(AttributeError):
        getattr(c, "no_such_method")  # noqa: B009
    with pytest.raises(AttributeError):
        c.no_such_method.remote()
    assert skate.get(c.incr.remote()) == 1


def test_exit_actor_outside_actor_raises(ray_start):
    with pytest.raises(Exception):  # noqa: B017
        skate.exit_actor()


# --- lifetime and identity ----------------------------------------------------------


def test_actor_process_exits_when_handle_dropped(ray_start):
    c = Counter.remote()
    pid = skate.get(c.pid.remote())
    assert psutil.pid_exists(pid)
    del c
    gc.collect()
    wait_for(lambda: pid_gone(pid),
             15, what="actor process to exit after its handle was dropped")


def test_dropping_handle_lets_submitted_calls_finish(ray_start):
    c = Counter.remote()
    refs = [c.incr.remote() for _ in range(20)]
    pid_ref = c.pid.remote()
    del c
    gc.collect()
    assert skate.get(refs, timeout=20) == list(range(1, 21))
    pid = skate.get(pid_ref, timeout=20)
    wait_for(lambda: pid_gone(pid),
             15, what="actor process to exit after its calls finished")


def test_actor_stays_while_handle_held_by_another_actor(ray_start):
    @skate.remote
    class Holder:
        def hold(self, handles):
            self.h = handles[0]
            return True

        def use(self):
            return skate.get(self.h.incr.remote())

    holder = Holder.remote()
    c = Counter.remote()
    skate.get(holder.hold.remote([c]))
    del c
    gc.collect()
    assert skate.get(holder.use.remote(), timeout=20) == 1


def test_runtime_context_actor_id(ray_start):
    @skate.remote
    class Who:
        def actor_id(self):
            return skate.get_runtime_context().get_actor_id()

    @skate.remote
    def task_actor_id():
        return skate.get_runtime_context().get_actor_id()

    w = Who.remote()
    assert skate.get(w.actor_id.remote()) == w._ray_actor_id.hex()
    assert skate.get(task_actor_id.remote()) is None
    assert skate.get_runtime_context().get_actor_id() is None


def test_handle_equality_and_repr(ray_start):
    c = Counter.options(name="eq").remote()
    same = skate.get_actor("eq")
    assert same == c
    assert hash(same) == hash(c)
    assert c != Counter.remote()
    assert "Counter" in repr(c)


# --- resources ----------------------------------------------------------------------


def test_actor_resources_third_pending_until_kill(ray_start):
    @skate.remote(num_cpus=1)
    class Heavy:
        def ping(self):
            return os.getpid()

    a, b = Heavy.remote(), Heavy.remote()
    assert len(set(skate.get([a.ping.remote(), b.ping.remote()], timeout=20))) == 2
    c = Heavy.remote()
    pending = c.ping.remote()
    with pytest.raises(GetTimeoutError):
        skate.get(pending, timeout=1)
    skate.kill(a)
    assert isinstance(skate.get(pending, timeout=20), int)


def test_default_actor_needs_no_cpu_to_run(ray_start):
    # Ray's default actor uses 1 CPU to be placed and 0 while running: many fit.
    actors = [Counter.remote() for _ in range(4)]
    assert skate.get([a.incr.remote() for a in actors], timeout=30) == [1, 1, 1, 1]


def test_actor_infeasible_custom_resource_pending(ray_start):
    @skate.remote(resources={"nothing-here": 1})
    class Nowhere:
        def ping(self):
            return 1

    n = Nowhere.remote()
    ready, _ = skate.wait([n.ping.remote()], timeout=1)
    assert ready == []
    skate.kill(n)


# --- worker output ------------------------------------------------------------------


def test_actor_stdout_reaches_driver(ray_start, capfd):
    @skate.remote
    class Talker:
        def say(self):
            print("hello from actor")
            return os.getpid()

    t = Talker.remote()
    pid = skate.get(t.say.remote())
    out, _ = wait_printed(capfd, "hello from actor")
    assert any("hello from actor" in ln and f"(Talker pid={pid}" in ln for ln in out.splitlines()), out


@skate.remote
def chatty():
    print("hello from task")
    return os.getpid()


def test_task_stdout_reaches_driver(ray_start, capfd):
    pid = skate.get(chatty.remote())
    out, _ = wait_printed(capfd, "hello from task")
    assert any("hello from task" in ln and f"(chatty pid={pid}" in ln for ln in out.splitlines()), out


@pytest.mark.parametrize("ending", ["skate.shutdown()", "pass  # interpreter exit"])
def test_output_printed_just_before_the_driver_leaves_is_not_lost(ending):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import skate
        skate.init(num_cpus=2)

        @skate.remote
        def task(i):
            print("line from task", i)
            return i

        @skate.remote
        class Talker:
            def say(self):
                print("line from actor")
                return 1

        t = Talker.remote()
        assert skate.get([task.remote(i) for i in range(4)] + [t.say.remote()]) == [0, 1, 2, 3, 1]
        {ending}
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for i in range(4):
        assert any(f"line from task {i}" in ln for ln in lines), out.stdout
    assert any("line from actor" in ln and "(Talker pid=" in ln for ln in lines), out.stdout


# --- sync calls: the caller reads the reply itself ----------------------------------
# A thread blocked in get() on an actor call reads the reply from the
# connection itself; the I/O loop steps back from it.  These check that
# nothing that does not block in get() loses its reply meanwhile.


def _exec_conn(handle):
    return handle._state.conn


def _sync_calls(c, n=20):
    for i in range(n):
        assert skate.get(c.incr.remote()) == i + 1


def test_sync_calls_leave_reading_to_the_caller(ray_start):
    c = Counter.remote()
    _sync_calls(c)
    conn = _exec_conn(c)
    assert conn.led, "no get() read its reply itself"
    wait_for(
        lambda: skate.get(c.read.remote()) and not conn.loop_reading,
        10,
        what="the loop to step back from the actor's connection",
    )


def test_after_sync_calls_awaiting_a_ref_still_resolves(ray_start):
    import asyncio

    c = Counter.remote()
    _sync_calls(c)

    async def main():
        return await asyncio.wait_for(c.incr.remote(), 10)

    assert asyncio.run(main()) == 21
    assert c.incr.remote().future().result(10) == 22


def test_after_sync_calls_wait_polling_sees_results(ray_start):
    c = Counter.remote()
    _sync_calls(c)
    ref = c.incr.remote()
    wait_for(lambda: skate.wait([ref], timeout=0)[0], 10, what="wait(timeout=0) to see the call done")
    assert skate.get(ref) == 21


def test_after_sync_calls_a_result_nobody_asks_for_is_still_read(ray_start, capfd):
    @skate.remote
    class Failing:
        def ok(self):
            return 1

        def boom(self):
            raise ValueError("nobody asked")

    f = Failing.remote()
    for _ in range(10):
        assert skate.get(f.ok.remote()) == 1
    ref = f.boom.remote()
    store, oid = runtime.current().store, ref._id
    # Nobody waits for it: the loop still reads the reply (its watch).
    wait_for(lambda: store.get(oid).state != PENDING, 10, what="the unattended reply to be read")
    del ref
    gc.collect()
    wait_printed(capfd, "nobody asked")


def test_sync_calls_from_many_threads(ray_start):
    @skate.remote
    class Echo:
        def echo(self, x):
            return x

    e = Echo.remote()

    def caller(k):
        for i in range(100):
            assert skate.get(e.echo.remote((k, i)), timeout=30) == (k, i)

    run_in_threads(caller, 4)


def test_get_timeout_while_reading_then_result(ray_start):
    import time

    @skate.remote
    class Slow:
        def ok(self):
            return 1

        def slow(self, s):
            time.sleep(s)
            return "done"

    s = Slow.remote()
    for _ in range(5):
        skate.get(s.ok.remote())
    ref = s.slow.remote(1.0)
    t0 = time.monotonic()
    with pytest.raises(GetTimeoutError):
        skate.get(ref, timeout=0.2)
    assert time.monotonic() - t0 < 0.9
    assert skate.get(ref, timeout=30) == "done"


def test_actor_dies_while_the_caller_reads(ray_start):
    @skate.remote
    class Dies:
        def ok(self):
            return 1

        def die(self):
            os._exit(3)

    d = Dies.remote()
    for _ in range(5):
        skate.get(d.ok.remote())
    with pytest.raises(ActorDiedError):
        skate.get(d.die.remote(), timeout=30)
    with pytest.raises(RayActorError):
        skate.get(d.ok.remote(), timeout=30)


def test_builtin_ready_and_terminate_methods(ray_start):
    c = Counter.remote()
    assert skate.get(c.__ray_ready__.remote(), timeout=30) is True
    pid = skate.get(c.pid.remote())
    c.__ray_terminate__.remote()
    with pytest.raises(ActorDiedError):
        skate.get(c.read.remote(), timeout=30)
    wait_for(lambda: pid_gone(pid), 30, what="the terminated actor's process to exit")


def test_ray_call_runs_a_function_against_the_actor_instance(ray_start):
    c = Counter.remote(5)

    def bump(actor, by, *, times=1):
        for _ in range(times):
            actor.value += by
        return actor.value, os.getpid()

    value, pid = skate.get(c.__ray_call__.remote(bump, 2, times=3), timeout=30)
    assert value == 11
    assert pid == skate.get(c.pid.remote())
    assert skate.get(c.read.remote()) == 11  # the same instance normal methods see

    def fails(actor):
        raise KeyError("inside")

    with pytest.raises(KeyError):
        skate.get(c.__ray_call__.remote(fails), timeout=30)
