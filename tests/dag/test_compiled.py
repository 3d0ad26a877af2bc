"""Compiled graphs on a real local cluster: the guide's examples, failures, timeouts, clean-up."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import skate
from skate.dag import CompiledDAGRef, InputNode, MultiOutputNode
from skate.exceptions import (
    ActorDiedError,
    RayActorError,
    RayCgraphCapacityExceeded,
    RayChannelError,
    RayChannelTimeoutError,
    RayTaskError,
)
from tests.conftest import wait_for

LOOP_THREAD = "skate-cgraph-loop"


@skate.remote
class Echo:
    def __init__(self):
        self.calls = 0

    def echo(self, x):
        self.calls += 1
        return x

    def inc(self, x):
        return x + 1

    def add(self, a, b=0):
        return a + b

    def thread(self, x=None):
        return threading.get_ident()

    def hold(self, s, payload=None):
        time.sleep(s)
        return s

    def sleep(self, s):
        time.sleep(s)
        return s

    def fail_if_negative(self, x):
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x

    def die(self, x):
        os._exit(1)

    def nbytes(self, arr):
        return arr.nbytes, arr.flags.writeable

    def make(self, n):
        return np.ones(n, dtype=np.uint8)


def threads_of(actor) -> list[str]:
    return skate.get(actor.__ray_call__.remote(lambda self: [t.name for t in threading.enumerate()]), timeout=30)


def _sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def sockets_of(actor) -> int:
    return skate.get(actor.__ray_call__.remote(lambda self: _sockets()), timeout=30)


def no_loop_threads(*actors) -> bool:
    return all(not any(t.startswith("skate-cgraph") for t in threads_of(a)) for a in actors)


# --- the guide's examples --------------------------------------------------------------------


def test_hello_world(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    assert skate.get(dag.execute("hello")) == "hello"  # uncompiled: ordinary actor call
    # The actor's link to the control store (task events use it) opens on first
    # use: open it now, so the counts below see only the graph's channels.
    assert skate.get(a.__ray_call__.remote(lambda self: len(skate.nodes())), timeout=30) >= 1
    actor_socks, driver_socks = sockets_of(a), _sockets()
    cdag = dag.experimental_compile()
    assert LOOP_THREAD in threads_of(a)
    assert sockets_of(a) > actor_socks
    ref = cdag.execute("hello")
    assert isinstance(ref, CompiledDAGRef)
    assert repr(ref) == f"CompiledDAGRef({cdag.get_id()}, execution_index=0)"
    assert skate.get(ref) == "hello"
    with pytest.raises(ValueError, match="only be called once"):
        skate.get(ref)
    for i in range(100):
        assert skate.get(cdag.execute(i)) == i
    cdag.teardown()
    assert no_loop_threads(a)
    assert sockets_of(a) == actor_socks  # every channel closed on both sides
    assert _sockets() == driver_socks
    cdag.teardown()  # twice is fine
    assert skate.get(a.echo.remote("still here")) == "still here"


def test_data_dependency_between_actors(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = b.inc.bind(a.inc.bind(inp))
    cdag = dag.experimental_compile()
    assert [skate.get(cdag.execute(i)) for i in range(20)] == [i + 2 for i in range(20)]
    cdag.teardown()
    assert no_loop_threads(a, b)


def test_multi_output_node(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp), b.inc.bind(inp)])
    cdag = dag.experimental_compile()
    refs = cdag.execute(1)
    assert isinstance(refs, list) and len(refs) == 2
    assert skate.get(refs) == [1, 2]
    refs = cdag.execute(5)
    assert skate.get(refs[1]) == 6  # each output on its own
    assert skate.get(refs[0]) == 5
    cdag.teardown()


def test_asyncio_driver(ray_start_4cpu):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        actor = Echo.remote()
        with InputNode() as inp:
            dag = actor.echo.bind(inp)
        cdag = dag.experimental_compile(enable_asyncio=True)

        async def one(i):
            fut = await cdag.execute_async(i)
            return await fut

        assert loop.run_until_complete(one(42)) == 42

        async def many():
            futs = [await cdag.execute_async(i) for i in range(5)]
            return [await f for f in reversed(futs)]

        assert loop.run_until_complete(many()) == [4, 3, 2, 1, 0]
        with pytest.raises(ValueError, match="execute_async"):
            cdag.execute(1)
        cdag.teardown()
        assert no_loop_threads(actor)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_asyncio_multi_output_and_app_error(ray_start_4cpu):
    loop = asyncio.new_event_loop()
    try:
        a, b = Echo.remote(), Echo.remote()
        with InputNode() as inp:
            dag = MultiOutputNode([a.echo.bind(inp), b.fail_if_negative.bind(inp)])
        asyncio.set_event_loop(loop)
        cdag = dag.experimental_compile(enable_asyncio=True)

        async def run(x):
            futs = await cdag.execute_async(x)
            return [await f for f in futs]

        assert loop.run_until_complete(run(3)) == [3, 3]
        with pytest.raises(ValueError, match="negative"):
            loop.run_until_complete(run(-1))
        assert loop.run_until_complete(run(4)) == [4, 4]
        cdag.teardown()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_application_exception_keeps_the_graph_usable(ray_start_4cpu):
    p = Echo.remote()
    with InputNode() as inp:
        dag = p.fail_if_negative.bind(inp)
    cdag = dag.experimental_compile()
    with pytest.raises(ValueError, match="negative: -1") as info:
        skate.get(cdag.execute(-1))
    assert isinstance(info.value, RayTaskError)
    assert "fail_if_negative" in str(info.value)
    assert skate.get(cdag.execute(3)) == 3
    cdag.teardown()


def test_exception_skips_downstream_tasks_and_reaches_the_driver(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = b.echo.bind(a.fail_if_negative.bind(inp))
    cdag = dag.experimental_compile()
    with pytest.raises(ValueError):
        skate.get(cdag.execute(-5))
    assert skate.get(cdag.execute(5)) == 5
    cdag.teardown()
    assert skate.get(b.__ray_call__.remote(lambda self: self.calls)) == 1  # b never ran for -5


def test_actor_death_example(ray_start_4cpu):
    actors = [Echo.remote() for _ in range(4)]
    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp) for a in actors])
    compiled_dag = dag.experimental_compile()
    skate.kill(actors[0])
    ref = compiled_dag.execute(1)
    with pytest.raises(ActorDiedError):
        skate.get(ref)
    live = []
    for a in actors:
        try:
            skate.get(a.echo.remote("ping"), timeout=30)
            live.append(a)
        except RayActorError:
            pass
    assert live == actors[1:]
    with pytest.raises(RayChannelError):
        compiled_dag.execute(2)  # torn down
    assert no_loop_threads(*live)
    # The survivors can join a new graph.
    with InputNode() as inp:
        dag2 = MultiOutputNode([a.inc.bind(inp) for a in live])
    c2 = dag2.experimental_compile()
    assert skate.get(c2.execute(1)) == [2, 2, 2]
    c2.teardown()


def test_actor_dying_in_a_method_raises_actor_died_error(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = b.echo.bind(a.die.bind(inp))
    cdag = dag.experimental_compile()
    with pytest.raises(ActorDiedError, match="died"):
        skate.get(cdag.execute(1), timeout=30)
    assert skate.get(b.echo.remote("alive")) == "alive"
    assert no_loop_threads(b)


# --- timeouts --------------------------------------------------------------------------------


def test_get_timeout_argument(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.sleep.bind(inp)
    cdag = dag.experimental_compile()
    ref = cdag.execute(1.0)
    with pytest.raises(RayChannelTimeoutError) as info:
        skate.get(ref, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    cdag.teardown()


@pytest.mark.parametrize("prefix", ["RAY_CGRAPH_", "SKATE_CGRAPH_"])
def test_get_timeout_from_the_environment(ray_start_4cpu, monkeypatch, prefix):
    monkeypatch.setenv(prefix + "get_timeout", "0.2")
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.sleep.bind(inp)
    cdag = dag.experimental_compile()
    start = time.monotonic()
    with pytest.raises(RayChannelTimeoutError, match="get_timeout"):
        skate.get(cdag.execute(2.0))
    assert time.monotonic() - start < 1.9
    cdag.teardown()


def test_timed_out_get_can_be_retried(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.sleep.bind(inp)
    cdag = dag.experimental_compile()
    ref = cdag.execute(0.5)
    with pytest.raises(RayChannelTimeoutError):
        ref.get(timeout=0.05)
    ref2 = cdag.execute(0.0)
    assert skate.get(ref2, timeout=10) == 0.0  # reads (and keeps) the first result on the way
    cdag.teardown()


@pytest.mark.parametrize("how", ["argument", "RAY_CGRAPH_", "SKATE_CGRAPH_"])
def test_submit_timeout(ray_start_4cpu, monkeypatch, how):
    # Values larger than a shared-memory slot go through the socket; while the
    # actor sleeps, its socket fills up and execute() cannot hand the input over.
    kwargs = {"_submit_timeout": 0.3}
    if how != "argument":
        monkeypatch.setenv(how + "submit_timeout", "0.3")
        kwargs = {}
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.hold.bind(inp[0], inp[1])
    cdag = dag.experimental_compile(_buffer_size_bytes=1024, **kwargs)
    cdag.execute(1.0, None)
    with pytest.raises(RayChannelTimeoutError, match="submit_timeout") as info:
        cdag.execute(0.0, b"x" * (8 * 1024 * 1024))
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(RayChannelError, match="torn down"):  # the input was cut: the graph went down
        cdag.execute(0.0, None)
    assert no_loop_threads(a)


# --- in flight, ordering, capacity ------------------------------------------------------------


def test_several_executions_in_flight_pipelined(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = b.inc.bind(a.inc.bind(inp))
    cdag = dag.experimental_compile(_max_inflight_executions=8)
    refs = [cdag.execute(i) for i in range(8)]
    assert [skate.get(r) for r in reversed(refs)] == [i + 2 for i in reversed(range(8))]
    cdag.teardown()


def test_max_inflight_executions(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile(_max_inflight_executions=2)
    r1, r2 = cdag.execute(1), cdag.execute(2)
    with pytest.raises(RayCgraphCapacityExceeded, match="in-flight"):
        cdag.execute(3)
    assert skate.get(r1) == 1
    r3 = cdag.execute(3)
    assert skate.get([r2, r3]) == [2, 3]
    # Dropped refs free their place once read.
    for i in range(10):
        cdag.execute(i)
    assert skate.get(cdag.execute("last")) == "last"
    cdag.teardown()


def test_tasks_run_on_a_background_thread_and_normal_calls_still_work(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.thread.bind(inp)
    cdag = dag.experimental_compile()
    dag_thread = skate.get(cdag.execute(None))
    main_thread = skate.get(a.thread.remote())
    assert dag_thread != main_thread
    cdag.teardown()


def test_one_compiled_graph_per_actor_at_a_time(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag1 = a.echo.bind(inp)
    c1 = dag1.experimental_compile()
    with InputNode() as inp:
        dag2 = a.inc.bind(inp)
    with pytest.raises(ValueError, match="one compiled graph at a time"):
        dag2.experimental_compile()
    assert skate.get(c1.execute(1)) == 1  # the first graph is unharmed
    c1.teardown()
    with InputNode() as inp:
        dag3 = a.inc.bind(inp)
    c3 = dag3.experimental_compile()
    assert skate.get(c3.execute(1)) == 2
    c3.teardown()


def test_garbage_collection_tears_the_graph_down(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1)) == 1
    del cdag
    wait_for(lambda: no_loop_threads(a), 20, what="the loop thread to end after the graph was collected")
    with InputNode() as inp:
        again = a.echo.bind(inp)
    wait_for(lambda: _compiles(again), 20, what="the actor to accept a new graph")


def _compiles(dag) -> bool:
    try:
        c = dag.experimental_compile()
    except ValueError:
        dag._compiled = False
        return False
    c.teardown()
    return True


# --- graph shapes --------------------------------------------------------------------------------


def test_several_inputs_attributes_and_kwargs(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([a.add.bind(inp[0], b=inp.y), b.add.bind(inp[1], inp[0])])
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1, 2, y=10)) == [11, 3]
    cdag.teardown()


def test_same_actor_twice_and_back_and_forth(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        x = a.inc.bind(inp)  # a
        y = b.inc.bind(x)  # a -> b
        z = a.add.bind(x, y)  # a (local x) + b's y
    cdag = z.experimental_compile()
    for i in range(5):
        assert skate.get(cdag.execute(i)) == (i + 1) + (i + 2)
    cdag.teardown()


def test_nested_nodes_in_lists_and_dicts(ray_start_4cpu):
    @skate.remote
    class Summer:
        def total(self, items, extra=None):
            return sum(items) + sum((extra or {}).values())

    a, s = Echo.remote(), Summer.remote()
    with InputNode() as inp:
        dag = s.total.bind([a.inc.bind(inp), 100], extra={"k": inp})
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1)) == 2 + 100 + 1
    cdag.teardown()


def test_large_values_go_through_shared_memory(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([a.nbytes.bind(inp), b.nbytes.bind(a.echo.bind(inp))])
    cdag = dag.experimental_compile()
    arr = np.arange(100_000, dtype=np.int64)  # 800 KB: fits a 1 MiB slot
    (n1, w1), (n2, w2) = skate.get(cdag.execute(arr))
    assert n1 == n2 == arr.nbytes
    assert not w1 and not w2  # read in place (zero-copy, read-only)
    cdag.teardown()
    with InputNode() as inp:
        dag = a.make.bind(inp)
    cdag = dag.experimental_compile(_buffer_size_bytes=64 * 1024)
    out = skate.get(cdag.execute(10_000_000))  # larger than a slot: through the socket
    assert out.nbytes == 10_000_000 and int(out.sum()) == 10_000_000
    small = skate.get(cdag.execute(100_000))  # fits a slot
    out2 = small.copy()
    assert int(out2.sum()) == 100_000
    cdag.teardown()


def test_no_shared_memory_or_listener_is_left_while_running(ray_start_4cpu):
    from skate._private.config import CONFIG

    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(np.ones(100_000))).sum() == 100_000
    # Segments are unlinked once every process mapped them.
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(CONFIG.shm_prefix + "-cg")]
    cdag.teardown()


# --- misuse ------------------------------------------------------------------------------------


def test_misuse_errors(ray_start_4cpu):
    @skate.remote
    def f(x):
        return x

    with InputNode() as inp:
        dag = f.bind(inp)
    with pytest.raises(NotImplementedError, match="only support actor method nodes"):
        dag.experimental_compile()
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile()
    with pytest.raises(ValueError, match="multiple times"):
        dag.experimental_compile()
    ref = cdag.execute(1)
    with pytest.raises(TypeError, match="cannot be used as Ray task/actor argument"):
        a.echo.remote(ref)
    with pytest.raises(ValueError, match="execute if enable_asyncio=False"):
        asyncio.run(cdag.execute_async(1))
    assert skate.get(ref) == 1
    cdag.teardown()
    with pytest.raises(RayChannelError, match="torn down"):
        cdag.execute(1)
    with pytest.raises(ValueError, match="exactly one InputNode"):
        a.echo.bind(1).experimental_compile()
    with InputNode() as inp:
        node = a.echo.bind(inp)
    with pytest.raises(NotImplementedError, match="not supported"):
        node.with_tensor_transport("mpi")
    with pytest.raises(NotImplementedError, match="_overlap_gpu_communication"):
        node.experimental_compile(_overlap_gpu_communication=True)
    with pytest.raises(ValueError, match="actor method nodes"):
        MultiOutputNode([inp]).experimental_compile()


# --- across nodes and processes ------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_actors_on_two_nodes_talk_over_tcp(cluster):
    cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)
    a = Echo.options(num_cpus=0).remote()
    b = Echo.options(num_cpus=0, resources={"other": 1}).remote()
    with InputNode() as inp:
        dag = b.nbytes.bind(a.echo.bind(inp))
    cdag = dag.experimental_compile()
    arr = np.ones(300_000, dtype=np.uint8)
    assert skate.get(cdag.execute(arr)) == (300_000, False)
    assert skate.get(cdag.execute(np.ones(10, dtype=np.uint8)))[0] == 10
    cdag.teardown()
    assert no_loop_threads(a, b)
    skate.shutdown()


def test_driver_exit_leaves_nothing_behind(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        "import skate\n"
        "from skate.dag import InputNode\n"
        "skate.init(num_cpus=2)\n"
        "@skate.remote\n"
        "class A:\n"
        "    def echo(self, x):\n"
        "        return x\n"
        "a = A.remote()\n"
        "with InputNode() as inp:\n"
        "    dag = a.echo.bind(inp)\n"
        "c = dag.experimental_compile()\n"
        "assert skate.get(c.execute(b'x' * 100_000)) == b'x' * 100_000\n"
        "print('ran', flush=True)\n"
        "import os\n"
        "os._exit(0)  # no teardown, no shutdown\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Its own session folder (a driver that skips shutdown leaves that one behind).
    sessions = tempfile.mkdtemp(prefix="sk-")  # short: socket paths live there
    env = dict(os.environ, PYTHONPATH=root, SKATE_TEMP_DIR=sessions)
    try:
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(sessions, ignore_errors=True)
    assert "ran" in out.stdout, out.stderr
    # The fixture then checks that no process and no shared-memory segment is left.


def test_async_actor_methods_run_on_the_actors_event_loop(ray_start_4cpu):
    @skate.remote
    class AsyncEcho:
        async def echo(self, x):
            await asyncio.sleep(0)
            return x

        async def ping(self):
            return "pong"

    a = AsyncEcho.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile()
    assert [skate.get(cdag.execute(i)) for i in range(10)] == list(range(10))
    assert skate.get(a.ping.remote()) == "pong"
    cdag.teardown()


def test_asyncio_driver_sees_actor_death(ray_start_4cpu):
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        a = Echo.remote()
        with InputNode() as inp:
            dag = a.die.bind(inp)
        cdag = dag.experimental_compile(enable_asyncio=True)

        async def run():
            fut = await cdag.execute_async(1)
            return await asyncio.wait_for(fut, 30)

        with pytest.raises(ActorDiedError):
            loop.run_until_complete(run())
        with pytest.raises(RayChannelError):
            loop.run_until_complete(run())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_get_of_a_list_shares_one_timeout(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([a.sleep.bind(inp), b.sleep.bind(inp)])
    cdag = dag.experimental_compile()
    refs = cdag.execute(0.5)
    with pytest.raises(RayChannelTimeoutError):
        skate.get(refs, timeout=0.1)
    cdag.teardown()
    with pytest.raises(ValueError, match="cannot mix"):
        skate.get([refs[0], a.echo.remote(1)])


def test_max_buffered_results(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile(_max_buffered_results=1)
    r0, r1, r2 = cdag.execute(0), cdag.execute(1), cdag.execute(2)
    with pytest.raises(ValueError, match="Too many buffered results"):
        skate.get(r2)  # would have to hold the results of r0 and r1
    assert skate.get(r0) == 0
    assert skate.get(r1) == 1
    cdag.teardown()


def test_dag_context_defaults_and_precedence(monkeypatch):
    from skate.dag import DAGContext

    ctx = DAGContext()
    monkeypatch.delenv("RAY_CGRAPH_get_timeout", raising=False)
    monkeypatch.delenv("SKATE_CGRAPH_get_timeout", raising=False)
    assert ctx.resolve("get_timeout") == 10.0
    assert ctx.resolve("max_inflight_executions") == 10
    monkeypatch.setenv("SKATE_CGRAPH_get_timeout", "3")
    assert ctx.resolve("get_timeout") == 3.0
    monkeypatch.setenv("RAY_CGRAPH_get_timeout", "2")
    assert ctx.resolve("get_timeout") == 2.0
    ctx.get_timeout = 1.0
    assert ctx.resolve("get_timeout") == 1.0
    assert ctx.resolve("get_timeout", 0.5) == 0.5
    assert DAGContext.get_current() is DAGContext.get_current()


def test_class_nodes_cannot_be_compiled(ray_start_4cpu):
    with InputNode() as inp:
        dag = Echo.bind().echo.bind(inp)
    with pytest.raises(NotImplementedError, match="existing actor"):
        dag.experimental_compile()


def test_async_actor_teardown_while_a_method_runs(ray_start_4cpu):
    @skate.remote
    class SlowAsync:
        async def slow(self, x):
            await asyncio.sleep(0.3)
            return x

    a = SlowAsync.remote()
    with InputNode() as inp:
        dag = a.slow.bind(inp)
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1)) == 1
    cdag.execute(2)  # in flight while the graph goes down
    start = time.monotonic()
    cdag.teardown()
    assert time.monotonic() - start < 5  # the method finished on the actor's event loop meanwhile
    assert no_loop_threads(a)


def test_two_graphs_at_once_on_different_actors(ray_start_4cpu):
    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        g1 = a.inc.bind(inp)
    with InputNode() as inp:
        g2 = b.echo.bind(inp)
    c1, c2 = g1.experimental_compile(), g2.experimental_compile()
    for i in range(20):
        r1, r2 = c1.execute(i), c2.execute(-i)
        assert (skate.get(r2), skate.get(r1)) == (-i, i + 1)
    c1.teardown()
    assert skate.get(c2.execute("still")) == "still"
    c2.teardown()


@pytest.mark.timeout(180)
def test_values_of_every_size_arrive_intact(ray_start_4cpu):
    # Sizes around the socket read size, the shared-memory threshold and the
    # slot size, several in flight at once through two actors.
    @skate.remote
    class Check:
        def digest(self, b):
            import hashlib

            return len(b), hashlib.sha256(b).hexdigest()

    import hashlib
    import random

    a, c = Echo.remote(), Check.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([c.digest.bind(a.echo.bind(inp)), a.echo.bind(inp)])
    cdag = dag.experimental_compile(_buffer_size_bytes=512 * 1024, _max_inflight_executions=6)
    rng = random.Random(7)
    sizes = [0, 1, 16 * 1024 - 40, 16 * 1024, 65536 - 21, 65536, 65536 + 9, 300_000, 512 * 1024 - 200, 512 * 1024 + 1, 3_000_000]
    sizes += [rng.randrange(0, 1_200_000) for _ in range(20)]
    pending = []
    for n in sizes:
        blob = rng.randbytes(n)
        pending.append((blob, cdag.execute(blob)))
        if len(pending) == 6:
            blob0, refs = pending.pop(0)
            (length, digest), back = skate.get(refs)
            assert (length, digest) == (len(blob0), hashlib.sha256(blob0).hexdigest())
            assert back == blob0
    for blob0, refs in pending:
        (length, digest), back = skate.get(refs)
        assert (length, digest) == (len(blob0), hashlib.sha256(blob0).hexdigest()) and back == blob0
    cdag.teardown()


@pytest.mark.timeout(180)
def test_large_values_between_actors_both_ways_do_not_stall(ray_start_4cpu):
    # Values larger than a slot go through the sockets; with several
    # executions in flight, a -> b -> a and the driver all write at once.
    @skate.remote
    class Join:
        def echo(self, x):
            return x

        def join(self, x, y):
            return len(x) + len(y)

    a, b = Join.remote(), Join.remote()
    with InputNode() as inp:
        x = a.echo.bind(inp)
        dag = MultiOutputNode([a.join.bind(x, b.echo.bind(x)), b.echo.bind(inp)])
    cdag = dag.experimental_compile(_buffer_size_bytes=4096, _max_inflight_executions=8)
    blob = b"z" * 2_000_000
    refs = [cdag.execute(blob) for _ in range(8)]
    for r in refs:
        n, back = skate.get(r, timeout=60)
        assert n == 4_000_000 and len(back) == 2_000_000
    cdag.teardown()


def _break_output_channels(actor):
    from skate._private.cgraph import worker

    for ag in list(worker._GRAPHS.values()):
        for w in ag.writers.values():
            for s in w.socks:
                s.shutdown(socket.SHUT_WR)


def test_a_broken_channel_of_a_live_actor_raises_ray_channel_error(ray_start_4cpu):
    a = Echo.remote()
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1)) == 1
    skate.get(a.__ray_call__.remote(_break_output_channels))
    with pytest.raises(RayChannelError, match="alive") as info:
        skate.get(cdag.execute(2))
    assert not isinstance(info.value, ActorDiedError)
    assert skate.get(a.echo.remote("alive")) == "alive"
    assert no_loop_threads(a)


def test_threads_share_one_compiled_graph(ray_start_4cpu):
    from tests.conftest import run_in_threads

    a = Echo.remote()
    with InputNode() as inp:
        dag = a.inc.bind(inp)
    cdag = dag.experimental_compile()

    def work(k):
        for i in range(200):
            x = k * 1000 + i
            assert skate.get(cdag.execute(x), timeout=30) == x + 1

    run_in_threads(work, 4)
    cdag.teardown()


def test_actor_process_killed_from_outside(ray_start_4cpu):
    import signal

    a, b = Echo.remote(), Echo.remote()
    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp), b.echo.bind(inp)])
    cdag = dag.experimental_compile()
    assert skate.get(cdag.execute(1)) == [1, 1]
    pid = skate.get(a.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(ActorDiedError):
        skate.get(cdag.execute(2), timeout=30)
    assert time.monotonic() - start < 10
    assert skate.get(b.echo.remote("alive")) == "alive"
    assert no_loop_threads(b)
