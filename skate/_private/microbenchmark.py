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

Before it measures, the orchestrator compiles skate's modules to bytecode
(``__pycache__``, as ``pip install`` does for Ray's): ``cold_start`` and
the idle memory then measure skate as installed, not Python compiling its
sources in every daemon (which ``PYTHONDONTWRITEBYTECODE`` otherwise makes
each start repeat).

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
from collections.abc import Callable
from typing import Any

MARK = "@@skate-bench "
FRAMEWORKS = ("skate", "ray")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_workloads() -> Any:
    """``bench_workloads.py`` beside this file, loaded by path (this file may
    run by path under Ray's interpreter, where ``skate`` is not importable)."""
    import importlib.util

    name = "skate_bench_workloads"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_workloads.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_W = _load_workloads()
Metric, Bench, BATCH, all_metrics, BASELINES = _W.Metric, _W.Bench, _W.BATCH, _W.all_metrics, _W.BASELINES
_WORKLOADS = _W.WORKLOADS


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
        ray.init(num_cpus=num_cpus, resources={"custom": _W.PG_CUSTOM})
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


def _compile_skate() -> None:
    """Writes bytecode for every skate module (see the module doc)."""
    import compileall

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "skate")
    if not compileall.compile_dir(root, quiet=1, workers=1):
        print("[setup] some skate modules did not compile to bytecode", file=sys.stderr)


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
    if "skate" in (args.framework, args.compare):
        _compile_skate()
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
