"""Microbenchmarks under Ray's metric names, for skate and (side by side) Ray.

The workloads take the framework module as a parameter, so the same code runs
``skate`` or ``ray``.  Nothing here imports either at module import time, and
only the standard library, numpy and psutil are used (lazily), so the file can
also be run by path with Ray's own interpreter::

    python -m benchmarks [-k PATTERN] [--duration S] [--compare ray] [--json PATH]
    .ray-venv/bin/python skate/_private/microbenchmark.py --worker --framework ray

Shapes follow ``ray microbenchmark`` (``ray/_private/ray_perf.py``), with the
per-call batches of the multi-client workloads cut to 1,000 so a 2-core machine
finishes a full comparison in minutes; "gigabytes" count 100 MiB as 0.1 GB, as
Ray does.  Each metric gets a warm-up, then is timed for ``--duration`` seconds.

The orchestrator runs every framework in its own worker process (its own
session), one at a time, reads one JSON line per metric, restarts the worker
past a metric that hangs or crashes, and kills whatever the run left behind.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run by path: keep this package's modules from shadowing top-level names.
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import functools
import importlib
import json
import queue
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, NamedTuple

MARK = "@@skate-bench "
BATCH = 1000  # calls per timed step in the batched workloads (Ray uses up to 10,000)
SETTLE_S = 3.0  # idle time after init() before measuring the cluster's memory
FRAMEWORKS = ("skate", "ray")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Metric(NamedTuple):
    """One reported number: its name, unit and direction."""

    name: str
    unit: str
    lower_is_better: bool = False


_WORKLOADS: dict[str, tuple[Metric, Callable[[Any, Bench], float]]] = {}
_COLD = Metric("cold_start", "s", True)
BASELINES = [
    Metric("unix_socket_roundtrip_us", "us", True),
    Metric("unix_socket_roundtrip_same_cpu_us", "us", True),
    Metric("numpy_memcpy_gbps", "GB/s"),
]


def _workload(name: str, unit: str, lower_is_better: bool = False) -> Callable:
    def register(fn: Callable[[Any, Bench], float]) -> Callable[[Any, Bench], float]:
        _WORKLOADS[name] = (Metric(name, unit, lower_is_better), fn)
        return fn

    return register


def _steps(name: str, unit: str, step: Callable[[Any, Bench], Any], multiplier: float = 1.0) -> None:
    """Registers a workload with no setup: ``step(ray, bench)`` timed by ``Bench.rate``."""
    _workload(name, unit)(lambda ray, b: b.rate(lambda: step(ray, b), multiplier))


def all_metrics() -> list[Metric]:
    """Returns every framework metric, in the order a run measures them."""
    return [_COLD] + [m for m, _ in _WORKLOADS.values()]


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


# ------------------------------------------------------ cluster-level metrics

_COLD_START = """
import sys, time
ray = __import__(sys.argv[1])
@ray.remote
def one():
    return 1
start = time.perf_counter()
ray.init(num_cpus=int(sys.argv[2]))
assert ray.get(one.remote()) == 1
print("@@cold", time.perf_counter() - start, flush=True)
ray.shutdown()
"""


def cold_start(framework: str, num_cpus: int, timeout: float = 180.0) -> float:
    """Seconds from ``init()`` to the first task's result, in a new interpreter.

    Args:
        framework: module name to import (``"skate"`` or ``"ray"``).
        num_cpus: passed to ``init()``.
        timeout: seconds before the child is abandoned.

    Returns:
        The elapsed seconds the child measured.
    """
    out = subprocess.run(
        [sys.executable, "-c", _COLD_START, framework, str(num_cpus)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("@@cold "):
            return float(line.split()[1])
    tail = (out.stderr or out.stdout or "?").strip().splitlines()[-1]
    raise RuntimeError(f"cold-start child exited {out.returncode}: {tail}")


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


# ----------------------------------------------------------------- baselines


def unix_socket_roundtrip_us(duration: float = 1.0, same_cpu: bool = False) -> float:
    """Microseconds per 32-byte round trip over a socketpair between two processes.

    Args:
        duration: seconds to time.
        same_cpu: pin both processes to one CPU (Linux); cross-CPU wake-ups cost
            far more than the system calls in some VMs.

    Returns:
        Mean microseconds per round trip.
    """
    saved = os.sched_getaffinity(0) if same_cpu else None
    if saved:
        os.sched_setaffinity(0, {min(saved)})
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # echo child (inherits the affinity)
        a.close()
        try:
            while msg := b.recv(64):
                b.sendall(msg)
        finally:
            os._exit(0)
    b.close()
    msg, count = b"x" * 32, 0
    try:
        for _ in range(1000):
            a.sendall(msg)
            a.recv(64)
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < duration:
            for _ in range(100):
                a.sendall(msg)
                a.recv(64)
            count += 100
    finally:
        a.close()
        os.waitpid(pid, 0)
        if saved:
            os.sched_setaffinity(0, saved)
    return elapsed / count * 1e6


def numpy_memcpy_gbps(duration: float = 1.0) -> float:
    """GB/s of ``np.copyto`` between two 256 MiB arrays."""
    import numpy as np

    src = np.ones(256 * 1024 * 1024, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration or count == 0:
        np.copyto(dst, src)
        count += 1
    return count * src.nbytes / elapsed / 1e9


# ------------------------------------------------------------------ worker


def _one_line(e: BaseException) -> str:
    """The exception's type, first and last message lines (a log tail's last words)."""
    lines = [ln.strip() for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    return " | ".join(lines[:1] + lines[1:][-1:])[:400]


def _emit(record: dict[str, Any]) -> None:
    print(MARK + json.dumps(record), flush=True)


def run_worker(framework: str, names: list[str], duration: float, num_cpus: int) -> int:
    """Runs the named metrics under one framework, printing one JSON line per metric.

    Args:
        framework: module to import (``"skate"`` or ``"ray"``).
        names: metric names, in run order.
        duration: seconds each metric is timed for.
        num_cpus: passed to ``init()``.

    Returns:
        The process exit status.
    """

    def record(name: str, fn: Callable[[], float]) -> None:
        _emit({"event": "start", "metric": name})
        value, error = None, None
        try:
            value = float(fn())
        except Exception as e:
            traceback.print_exc()
            error = _one_line(e)
        _emit({"metric": name, "value": value, "error": error})
        shown = f"{value:.6g}" if error is None else f"FAILED {error}"
        print(f"[{framework}] {name}: {shown}", file=sys.stderr, flush=True)

    if "cold_start" in names:
        record("cold_start", lambda: cold_start(framework, num_cpus))
    rest = [n for n in names if n != "cold_start"]
    if not rest:
        return 0
    try:
        ray = importlib.import_module(framework)
        ray.init(num_cpus=num_cpus)
    except Exception as e:
        traceback.print_exc()
        error = "init failed: " + _one_line(e)
        for name in rest:
            _emit({"metric": name, "value": None, "error": error})
        return 1
    try:
        bench = Bench(ray, duration, num_cpus)
        for name in rest:
            try:
                record(name, lambda: _WORKLOADS[name][1](ray, bench))  # noqa: B023
            finally:
                bench.cleanup()
    finally:
        ray.shutdown()
    return 0


# ------------------------------------------------------------ orchestrator


def _dump_stacks(proc: subprocess.Popen, label: str, metric: str | None) -> None:
    """Saves every stack of a hung run (py-spy, when installed) for a post-mortem."""
    import shutil

    import psutil

    spy = shutil.which("py-spy")
    if spy is None:
        return
    path = os.path.join(tempfile.gettempdir(), f"skate-bench-hang-{label.replace(' ', '_').replace('/', '-')}-{metric}.txt")
    with open(path, "w") as out:
        family = set()
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == proc.pid:
                    family.add(p.pid)
                    family.update(c.pid for c in p.children(recursive=True))
            except (OSError, psutil.Error):
                pass
        for p in psutil.process_iter():
            try:
                if p.pid not in family:
                    continue
                out.write(f"=== pid {p.pid}: {' '.join(p.cmdline()[:4])}\n")
                out.flush()
                subprocess.run([spy, "dump", "--pid", str(p.pid)], stdout=out, stderr=subprocess.STDOUT, timeout=30)
            except (OSError, psutil.Error, subprocess.SubprocessError):
                pass
    print(f"[{label}] {metric} hung; stacks of its processes: {path}", file=sys.stderr, flush=True)


def _kill_session(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Ends ``proc`` and every process still in its session (daemons included)."""
    import psutil

    sid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(sid, signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                    p.send_signal(sig)
                    left.append(p)
            except (OSError, psutil.Error):
                pass
        if not left:
            break
        psutil.wait_procs(left, timeout=grace)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _ray_python() -> str:
    if os.environ.get("SKATE_RAY_PYTHON"):
        return os.environ["SKATE_RAY_PYTHON"]
    for root in (os.getcwd(), PKG_ROOT):
        if os.path.exists(cand := os.path.join(root, ".ray-venv", "bin", "python")):
            return cand
    raise FileNotFoundError("no Ray interpreter: run scripts/install_ray.sh or set SKATE_RAY_PYTHON")


def run_framework(
    framework: str, names: list[str], args: argparse.Namespace, label: str
) -> dict[str, tuple[float | None, str | None]]:
    """Runs ``names`` under ``framework`` in worker processes, one metric hang at a time.

    Args:
        framework: ``"skate"`` or ``"ray"``.
        names: metric names to run.
        args: parsed command line (duration, num_cpus, timeout, verbose).
        label: prefix for progress lines.

    Returns:
        metric name -> (value or None, error or None).
    """
    results: dict[str, tuple[float | None, str | None]] = {}
    try:
        python = sys.executable if framework == "skate" else _ray_python()
    except FileNotFoundError as e:
        return {n: (None, str(e)) for n in names}
    env = dict(os.environ)
    if framework == "skate":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PKG_ROOT, env.get("PYTHONPATH")]))
    else:
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    remaining = list(names)
    while remaining:
        cmd = [python, os.path.abspath(__file__), "--worker", "--framework", framework,
               "--duration", str(args.duration), "--num-cpus", str(args.num_cpus),
               "--metrics", ",".join(remaining)]  # fmt: skip
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else err,
                                env=env, text=True, start_new_session=True)  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: Any = proc.stdout, out: queue.Queue = lines) -> None:
            for line in stream:
                out.put(line)
            out.put(None)

        threading.Thread(target=pump, daemon=True).start()
        current, failure = None, None
        try:
            while (line := lines.get(timeout=args.timeout)) is not None:
                if not line.startswith(MARK):
                    sys.stderr.write(line if args.verbose else "")
                    continue
                rec = json.loads(line[len(MARK) :])
                current = rec["metric"] if rec.get("event") == "start" else None
                if current is None:
                    results[rec["metric"]] = (rec["value"], rec["error"])
                    shown = f"{rec['value']:.6g}" if rec["error"] is None else f"FAILED {rec['error']}"  # fmt: skip
                    print(f"[{label}] {rec['metric']}: {shown}", file=sys.stderr, flush=True)
        except queue.Empty:
            failure = f"timed out after {args.timeout:.0f}s"
            _dump_stacks(proc, label, current)
        finally:
            _kill_session(proc)
        err.seek(0)
        tail = (err.read().decode(errors="replace").strip() or "?").splitlines()[-1]
        err.close()
        failure = failure or f"worker exited with {proc.returncode}: {tail}"
        progressed = any(n in results for n in remaining)
        if current is not None and current not in results:
            results[current] = (None, failure)  # hung or crashed: skip it, restart past it
            print(f"[{label}] {current}: FAILED {failure}", file=sys.stderr, flush=True)
        elif not progressed:
            results.update({n: (None, failure) for n in remaining})
        remaining = [n for n in remaining if n not in results]
    return results


def _fmt(v: float | None) -> str:
    if v is None:
        return "FAIL"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def _ratio(m: Metric, skate: float | None, ray: float | None) -> float | None:
    if not skate or not ray:
        return None
    return ray / skate if m.lower_is_better else skate / ray


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks [-k PATTERN] [--compare ray] ...``.

    Args:
        argv: arguments, without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 when every selected metric produced a value.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--envelope" in argv:  # the scalability envelope has its own options
        from skate._private import envelope

        return envelope.main([a for a in argv if a != "--envelope"])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--envelope", action="store_true",
                   help="run the single-node scalability envelope instead (see --envelope --help)")
    p.add_argument("-k", dest="pattern", default="", help="regex selecting metric names")
    p.add_argument("--duration", type=float, default=2.0, help="timed seconds per metric")
    p.add_argument("--compare", choices=["ray"], help="also run the workloads under Ray")
    p.add_argument("--framework", choices=FRAMEWORKS, default="skate", help="main framework")
    p.add_argument("--json", dest="json_path", help="write the results as JSON here")
    p.add_argument("--repeat", type=int, help="runs per framework, best kept (2 with --compare)")
    p.add_argument("--num-cpus", type=int, default=max(2, os.cpu_count() or 2))
    p.add_argument("--timeout", type=float, help="seconds without progress before a worker is killed")
    p.add_argument("--list", action="store_true", help="list the metrics and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show the workers' output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--metrics", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    metrics = [m for m in all_metrics() if re.search(args.pattern, m.name)]
    if args.metrics:
        wanted = set(args.metrics.split(","))
        metrics = [m for m in all_metrics() if m.name in wanted]
    if args.list:
        print("\n".join(f"{m.name} ({m.unit})" for m in metrics))
        return 0
    names = [m.name for m in metrics]
    if args.worker:
        return run_worker(args.framework, names, args.duration, args.num_cpus)
    if args.timeout is None:
        args.timeout = 60 + 10 * args.duration
    frameworks = [args.framework] + ([args.compare] if args.compare and args.compare != args.framework else [])  # fmt: skip
    repeat = args.repeat or (2 if len(frameworks) > 1 else 1)

    baselines: dict[str, float | None] = {}
    fns = (unix_socket_roundtrip_us, functools.partial(unix_socket_roundtrip_us, same_cpu=True),
           numpy_memcpy_gbps)  # fmt: skip
    for m, fn in zip(BASELINES, fns, strict=True):
        try:
            baselines[m.name] = fn(min(args.duration, 1.0))
        except Exception as e:
            baselines[m.name] = None
            print(f"[baseline] {m.name}: FAILED {type(e).__name__}: {e}", file=sys.stderr)

    best: dict[str, dict[str, float | None]] = {f: {} for f in FRAMEWORKS}
    errors: dict[str, dict[str, str]] = {f: {} for f in FRAMEWORKS}
    for i in range(repeat):
        for fw in frameworks:  # alternate, never at the same time
            for name, (value, error) in run_framework(fw, names, args, f"{fw} {i + 1}/{repeat}").items():  # fmt: skip
                if error is not None:
                    errors[fw][name] = error
                    continue
                old = best[fw].get(name)
                lower = next(m for m in metrics if m.name == name).lower_is_better
                if old is None or (value < old if lower else value > old):
                    best[fw][name] = value

    rows = []
    for m in metrics:
        s, r = best["skate"].get(m.name), best["ray"].get(m.name)
        rows.append({"metric": m.name, "unit": m.unit, "skate": s, "ray": r,
                     "ratio": _ratio(m, s, r)})  # fmt: skip
    width = max(len(n) for n in names + [m.name for m in BASELINES]) + 2
    cols = [f for f in FRAMEWORKS if f in frameworks]
    head = f"{'metric':<{width}}{'unit':<10}" + "".join(f"{('Ray' if c == 'ray' else c):>14}" for c in cols)  # fmt: skip
    print(head + (f"{'ratio':>10}" if len(cols) == 2 else ""))
    for row in rows:
        line = f"{row['metric']:<{width}}{row['unit']:<10}" + "".join(f"{_fmt(row[c]):>14}" for c in cols)  # fmt: skip
        if len(cols) == 2:
            line += f"{row['ratio']:>9.2f}x" if row["ratio"] else f"{'-':>10}"
        print(line)
    print("\nbaselines (no framework, same machine, same run):")
    for m in BASELINES:
        print(f"{m.name:<{width}}{m.unit:<10}{_fmt(baselines[m.name]):>14}")
    failed = [(fw, n, errors[fw][n]) for fw in cols for n in names
              if best[fw].get(n) is None and n in errors[fw]]  # fmt: skip
    if failed:
        print("\nerrors:")
        for fw, n, e in failed:
            print(f"  {fw} {n}: {e}")
    if args.json_path:
        rows += [{"metric": m.name, "unit": m.unit, "skate": None, "ray": None, "ratio": None,
                  "baseline": baselines[m.name]} for m in BASELINES]  # fmt: skip
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
