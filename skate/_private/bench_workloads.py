"""The workloads of skate's microbenchmark, under Ray's metric names.

Each workload takes the framework module (``skate`` or ``ray``) and a
``Bench`` and returns its rate.  Nothing here imports either framework at
import time, and only the standard library, numpy and psutil are used
(lazily): ``microbenchmark.py`` loads this file by path, also under Ray's own
interpreter.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
import types
from collections.abc import Callable
from typing import Any, NamedTuple

BATCH = 1000  # calls per timed step in the batched workloads (Ray uses up to 10,000)
SETTLE_S = 3.0  # idle time after init() before measuring the cluster's memory


class Metric(NamedTuple):
    """One reported number: its name, unit and direction."""

    name: str
    unit: str
    lower_is_better: bool = False


#: metric name -> (its Metric, the workload)
WORKLOADS: dict[str, tuple[Metric, Callable[[Any, Bench], float]]] = {}
COLD = Metric("cold_start", "s", True)
BASELINES = [
    Metric("unix_socket_roundtrip_us", "us", True),
    Metric("unix_socket_roundtrip_same_cpu_us", "us", True),
    Metric("numpy_memcpy_gbps", "GB/s"),
]


def _workload(name: str, unit: str, lower_is_better: bool = False) -> Callable:
    def register(fn: Callable[[Any, Bench], float]) -> Callable[[Any, Bench], float]:
        WORKLOADS[name] = (Metric(name, unit, lower_is_better), fn)
        return fn

    return register


def _steps(name: str, unit: str, step: Callable[[Any, Bench], Any], multiplier: float = 1.0) -> None:
    """Registers a workload with no setup: ``step(ray, bench)`` timed by ``Bench.rate``."""
    _workload(name, unit)(lambda ray, b: b.rate(lambda: step(ray, b), multiplier))


def all_metrics() -> list[Metric]:
    """Returns every framework metric, in the order a run measures them."""
    return [COLD] + [m for m, _ in WORKLOADS.values()]


class Bench:
    """Per-run state handed to every workload: timing settings and remote definitions."""

    def __init__(self, ray: Any, duration: float, num_cpus: int) -> None:
        self.ray = ray
        self.duration = duration
        self.num_cpus = num_cpus
        self.n_cpu = max(1, num_cpus // 2)
        self._actors: list[Any] = []
        self._idle: tuple[float, int] | None = None

    @functools.cached_property
    def d(self) -> types.SimpleNamespace:
        """The remote functions and actor classes, declared on first use."""
        return _define(self.ray)

    def idle(self) -> tuple[float, int]:
        """Measures (once) the idle cluster: RSS in MB and process count."""
        if self._idle is None:
            self._idle = idle_cluster(self.ray)
        return self._idle

    def actors(self, handles: list[Any]) -> list[Any]:
        """Registers actor handles to kill when the current workload ends."""
        self._actors.extend(handles)
        return handles

    def cleanup(self) -> None:
        """Kills the actors the last workload created."""
        for a in self._actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self._actors = []

    def rate(self, fn: Callable[[], Any], multiplier: float = 1.0) -> float:
        """Warms ``fn`` up, then times it for ``duration`` seconds.

        The warm-up lasts ``min(1, duration / 2)`` seconds and at least 2 steps;
        the timed phase at least 3 steps, so one slow step never decides a rate.

        Args:
            fn: one step of the workload.
            multiplier: operations (or gigabytes) per step.

        Returns:
            Steps per second times ``multiplier``.
        """
        warm, count, start = min(1.0, self.duration / 2), 0, time.perf_counter()
        while count < 2 or time.perf_counter() - start < warm:  # slow steps: 2 warm-ups
            fn()
            count += 1
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= self.duration and count >= 3:  # slow steps: 3 timed
                return count * multiplier / elapsed


def _define(ray: Any) -> types.SimpleNamespace:
    """Declares the remote functions and actor classes of the workloads on ``ray``."""

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    @ray.remote
    def do_put():
        import numpy as np

        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    @ray.remote
    def create_object_containing_ref():
        return [ray.put(1) for _ in range(10000)]

    @ray.remote
    def nbytes(x):
        return x.nbytes

    @ray.remote
    def work(actors, n):
        ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_arg(self, x):
            return b"ok"

        def echo(self, x):
            return x

        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

        async def small_value_with_arg(self, x):
            return b"ok"

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers):
            self.servers = servers if isinstance(servers, list) else [servers]

        def small_value_batch(self, n):
            ray.get([s.small_value.remote() for s in self.servers for _ in range(n)])

        def small_value_batch_arg(self, n):
            x = ray.put(0)
            ray.get([s.small_value_arg.remote(x) for s in self.servers for _ in range(n)])

    return types.SimpleNamespace(
        small_value=small_value, do_put_small=do_put_small, do_put=do_put,
        create_object_containing_ref=create_object_containing_ref, nbytes=nbytes,
        work=work, Actor=Actor, AsyncActor=AsyncActor, Client=Client,
    )  # fmt: skip


# ---------------------------------------------------------------- workloads

_workload("idle_cluster_rss_mb", "MB", True)(lambda ray, b: b.idle()[0])
_workload("idle_cluster_processes", "procs", True)(lambda ray, b: b.idle()[1])


@_workload("single_client_get_calls", "calls/s")
def _get_calls(ray: Any, b: Bench) -> float:
    value = ray.put(0)
    return b.rate(lambda: ray.get(value))


_steps("single_client_put_calls", "calls/s", lambda ray, b: ray.put(0))

_steps("multi_client_put_calls", "calls/s",
       lambda ray, b: ray.get([b.d.do_put_small.remote() for _ in range(10)]), 1000)  # fmt: skip


@_workload("single_client_put_gigabytes", "GB/s")
def _put_gigabytes(ray: Any, b: Bench) -> float:
    import numpy as np

    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
    return b.rate(lambda: ray.put(arr), 8 * 0.1)


_steps("multi_client_put_gigabytes", "GB/s",
       lambda ray, b: ray.get([b.d.do_put.remote() for _ in range(10)]), 10 * 8 * 0.1)  # fmt: skip


@_workload("large_arg_task_gigabytes", "GB/s")
def _large_arg(ray: Any, b: Bench) -> float:
    import numpy as np

    arr = np.ones(100 * 1024 * 1024, dtype=np.uint8)
    got = ray.get(b.d.nbytes.remote(arr))
    if got != arr.nbytes:
        raise AssertionError(f"task saw {got} bytes, expected {arr.nbytes}")
    return b.rate(lambda: ray.get(b.d.nbytes.remote(arr)), 0.1)


_steps("single_client_tasks_and_get_batch", "batches/s",
       lambda ray, b: ray.get([b.d.small_value.remote() for _ in range(BATCH)]))  # fmt: skip


@_workload("single_client_get_object_containing_10k_refs", "calls/s")
def _get_10k_refs(ray: Any, b: Bench) -> float:
    ref = b.d.create_object_containing_ref.remote()
    return b.rate(lambda: ray.get(ref))


@_workload("single_client_wait_1k_refs", "calls/s")
def _wait_1k_refs(ray: Any, b: Bench) -> float:
    def step() -> None:
        not_ready = [b.d.small_value.remote() for _ in range(1000)]
        fetch_local = True  # only the first wait needs to start the fetches
        for _ in range(1000):
            _, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False

    return b.rate(step)


_steps("single_client_tasks_sync", "tasks/s", lambda ray, b: ray.get(b.d.small_value.remote()))
_steps("single_client_tasks_async", "tasks/s",
       lambda ray, b: ray.get([b.d.small_value.remote() for _ in range(BATCH)]), BATCH)  # fmt: skip


@_workload("multi_client_tasks_async", "tasks/s")
def _multi_tasks_async(ray: Any, b: Bench) -> float:
    actors = b.actors([b.d.Actor.remote() for _ in range(4)])
    return b.rate(
        lambda: ray.get([a.small_value_batch.remote(BATCH) for a in actors]), BATCH * 4
    )


def _actor_calls(ray: Any, b: Bench, cls: str = "Actor", batch: int = BATCH,
                 with_arg: bool = False, **options: Any) -> float:  # fmt: skip
    actor_cls = getattr(b.d, cls)
    a = b.actors([(actor_cls.options(**options) if options else actor_cls).remote()])[0]
    if batch == 1:
        return b.rate(lambda: ray.get(a.small_value.remote()))
    if with_arg:
        return b.rate(lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(batch)]), batch)  # fmt: skip
    return b.rate(lambda: ray.get([a.small_value.remote() for _ in range(batch)]), batch)


def _one_to_n(ray: Any, b: Bench, cls: str = "Actor") -> float:
    servers = b.actors([getattr(b.d, cls).remote() for _ in range(b.n_cpu)])
    client = b.actors([b.d.Client.remote(servers)])[0]
    return b.rate(lambda: ray.get(client.small_value_batch.remote(BATCH)), BATCH * len(servers))


def _n_to_n(ray: Any, b: Bench, cls: str = "Actor") -> float:
    servers = b.actors([getattr(b.d, cls).remote() for _ in range(b.n_cpu)])
    return b.rate(lambda: ray.get([b.d.work.remote(servers, BATCH) for _ in range(4)]), 4 * BATCH)


def _n_to_n_with_arg(ray: Any, b: Bench) -> float:
    servers = b.actors([b.d.Actor.remote() for _ in range(b.n_cpu)])
    clients = b.actors([b.d.Client.remote(s) for s in servers])
    return b.rate(
        lambda: ray.get([c.small_value_batch_arg.remote(BATCH) for c in clients]),
        BATCH * len(clients),
    )


for _name, _fn, _kw in [
    ("1_1_actor_calls_sync", _actor_calls, {"batch": 1}),
    ("1_1_actor_calls_async", _actor_calls, {}),
    ("1_1_actor_calls_concurrent", _actor_calls, {"max_concurrency": 16}),
    ("1_n_actor_calls_async", _one_to_n, {}),
    ("n_n_actor_calls_async", _n_to_n, {}),
    ("n_n_actor_calls_with_arg_async", _n_to_n_with_arg, {}),
    ("1_1_async_actor_calls_sync", _actor_calls, {"cls": "AsyncActor", "batch": 1}),
    ("1_1_async_actor_calls_async", _actor_calls, {"cls": "AsyncActor"}),
    ("1_1_async_actor_calls_with_args_async", _actor_calls, {"cls": "AsyncActor", "with_arg": True}),
    ("1_n_async_actor_calls_async", _one_to_n, {"cls": "AsyncActor"}),
    ("n_n_async_actor_calls_async", _n_to_n, {"cls": "AsyncActor"}),
]:
    _workload(_name, "calls/s")(functools.partial(_fn, **_kw))



# ------------------------------------------------------ placement groups

PG_CUSTOM = 100.0  # units of the "custom" resource every run's init() gives the node


@_workload("placement_group_create/removal", "groups/s")
def _pg_create_removal(ray: Any, b: Bench) -> float:
    """100 single-bundle groups of a custom resource: created, waited for, removed (Ray's workload)."""
    util = importlib.import_module(ray.__name__ + ".util")

    def step() -> None:
        pgs = [util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(100)]
        for pg in pgs:
            if not pg.wait(timeout_seconds=30):
                raise AssertionError("a placement group was not created within 30 s")
        for pg in pgs:
            util.remove_placement_group(pg)

    return b.rate(step, 100)


# ------------------------------------------------------ DAGs and compiled graphs


def _echo_graph(ray: Any, b: Bench, stages: int, compiled: bool) -> float:
    """Microseconds per ``get(dag.execute("hello"))`` through ``stages`` echo actors."""
    dag_mod = importlib.import_module(ray.__name__ + ".dag")
    actors = b.actors([b.d.Actor.remote() for _ in range(stages)])
    with dag_mod.InputNode() as inp:
        node = inp
        for a in actors:
            node = a.echo.bind(node)
    dag = node.experimental_compile() if compiled else node
    try:
        if ray.get(dag.execute("hello")) != "hello":
            raise AssertionError("the graph did not echo its input")
        return 1e6 / b.rate(lambda: ray.get(dag.execute("hello")))
    finally:
        if compiled:
            dag.teardown()


_workload("compiled_graph_echo_us", "us", True)(functools.partial(_echo_graph, stages=1, compiled=True))
_workload("compiled_graph_pipeline_2_actors_us", "us", True)(functools.partial(_echo_graph, stages=2, compiled=True))
_workload("dag_execute_uncompiled_us", "us", True)(functools.partial(_echo_graph, stages=1, compiled=False))

def idle_cluster(ray: Any) -> tuple[float, int]:
    """Sums the RSS (MB) and counts the processes of the idle local cluster.

    The cluster's processes are the driver's descendants, plus for Ray any
    process that names the session (daemons that left the driver's tree).
    """
    import psutil

    time.sleep(SETTLE_S)
    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    marker = None
    try:  # Ray-only, private: daemons that left the driver's tree still name the session
        marker = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
    except Exception:
        pass
    if marker:
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != me.pid and marker in " ".join(p.info["cmdline"] or []):
                procs.setdefault(p.pid, p)
    total, count = 0, 0
    for p in procs.values():
        try:
            total += p.memory_info().rss
            count += 1
        except Exception:
            pass
    return total / 1e6, count
