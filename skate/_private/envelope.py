"""The single-node scalability envelope: ``python -m benchmarks --envelope [--compare ray]``.

Ray's single-node dimensions, each run in a fresh process tree (a new
local cluster), timed, with the peak memory of the whole tree:

==================  =========================================================
``args``            N object arguments (refs from ``put``) to one task
``returns``         one task with ``num_returns=N`` (small values), all got
``get``             N objects of 128 KiB (shared memory) in one ``get``
``queued``          N trivial tasks submitted at once, then all got
``large``           one N-GiB array through ``put`` then ``get``, timed the
                    first time (fresh memory) and again; a memcpy of the
                    same size (warm pages) is the baseline
``actors``          N actors created at once, each called once
``inflight``        N tasks in flight at once: each waits on an argument a
                    slow task produces, then all are got
==================  =========================================================

The dimensions that run tasks or actors first run one trivial task,
untimed (``WARM_UP``), under both frameworks.

Each dimension also reports the CPU time (user + system) its timed part
used in the run's driver, daemons and workers: on a machine other work
loads, wall time also counts waiting for a core, and a framework with more
busy threads gets more of them; CPU time is the cost itself.

Peak memory is the largest sum, over every process of the run (driver,
daemons, workers: the run's session and all descendants), of the proportional set size (PSS: a page shared by k
processes counts 1/k in each), sampled every 0.1 s.  A run that would
leave this machine under ``--min-free-gib`` of free memory is stopped and
reported as such, not left to the OOM killer.

This file is also the worker: ``python envelope.py --worker FRAMEWORK DIM N
NUM_CPUS`` imports only the framework (``skate`` or ``ray``) and numpy, so it
runs under Ray's interpreter too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: name -> (default N, unit of N, what it measures)
DIMENSIONS: dict[str, tuple[float, str, str]] = {
    "args": (10_000, "args", "object arguments to one task"),
    "returns": (3_000, "returns", "returns from one task"),
    "get": (10_000, "objects", "objects (128 KiB) in one get"),
    "queued": (1_000_000, "tasks", "tasks queued at once"),
    "large": (4, "GiB", "one object through put/get"),
    "actors": (1_000, "actors", "actors created and called once"),
    "inflight": (10_000, "tasks", "tasks in flight at once"),
}
MARK = "@@envelope "
#: Dimensions that run tasks or actors: one trivial task runs first, untimed,
#: under both frameworks, so that the timing is the dimension's and not the
#: first worker's start (skate starts workers on demand; Ray starts them with
#: the cluster, before ``init`` returns).
WARM_UP = ("args", "returns", "queued", "actors", "inflight")


# --- the worker (framework side) -----------------------------------------------------------
def _run_dimension(ray: object, dim: str, n: int) -> dict:
    import numpy as np

    r: object = ray
    out: dict = {}
    if dim in WARM_UP:

        @r.remote
        def ready() -> int:
            return 0

        r.get(ready.remote())  # untimed: a worker is up, as Ray's are after init
    t0, c0 = time.perf_counter(), _tree_cpu()
    if dim == "args":

        @r.remote
        def count(*xs: object) -> int:
            return len(xs)

        refs = [r.put(i) for i in range(n)]
        assert r.get(count.remote(*refs)) == n
    elif dim == "returns":

        @r.remote
        def many(k: int) -> tuple:
            return tuple(range(k))

        refs = many.options(num_returns=n).remote(n)
        assert r.get(refs)[-1] == n - 1
    elif dim == "get":
        refs = [r.put(np.full(128 * 1024, i % 251, dtype=np.uint8)) for i in range(n)]
        t0, c0 = time.perf_counter(), _tree_cpu()  # the get alone
        vals = r.get(refs)
        assert len(vals) == n and int(vals[-1][0]) == (n - 1) % 251
    elif dim == "queued":

        @r.remote
        def noop(i: int) -> int:
            return i

        refs = [noop.remote(i) for i in range(n)]
        got = r.get(refs)
        assert got[-1] == n - 1
    elif dim == "large":
        size = int(n * (1 << 30))
        a = np.ones(size, dtype=np.uint8)
        b = np.empty_like(a)
        np.copyto(b, a)  # first touch of b's pages
        t = time.perf_counter()
        np.copyto(b, a)  # memcpy itself: warm pages
        out["memcpy_gbps"] = size / (time.perf_counter() - t) / 1e9
        del b
        t0, c0 = time.perf_counter(), _tree_cpu()
        ref = r.put(a)
        back = r.get(ref)
        assert back.nbytes == size and int(back[-1]) == 1
        out["seconds"] = time.perf_counter() - t0
        out["cpu_s"] = _tree_cpu() - c0
        out["gbps"] = size / out["seconds"] / 1e9
        del back, ref
        t = time.perf_counter()  # once more: the store's memory has been touched before
        back = r.get(r.put(a))
        out["warm_gbps"] = size / (time.perf_counter() - t) / 1e9
        del back
        return out
    elif dim == "actors":

        @r.remote(num_cpus=0)
        class Cell:
            def ping(self) -> int:
                return os.getpid()

        actors = [Cell.remote() for _ in range(n)]
        pids = r.get([a.ping.remote() for a in actors])
        assert len(set(pids)) == n
    elif dim == "inflight":

        @r.remote
        def slow() -> int:
            time.sleep(0.5)
            return 1

        @r.remote
        def after(gate: int, i: int) -> int:
            return gate + i

        gate = slow.remote()
        refs = [after.remote(gate, i) for i in range(n)]
        assert r.get(refs)[-1] == n
    else:
        raise ValueError(f"unknown dimension {dim!r}")
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = _tree_cpu() - c0
    return out


def _tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and every live
    descendant (daemons, workers): the measure a loaded machine leaves alone,
    where wall time also counts waiting for a core."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def worker(framework: str, dim: str, n: float, num_cpus: int) -> int:
    """Runs one dimension in this process under ``framework``; prints its result line."""
    if framework == "ray":
        import ray
    else:
        import skate as ray
    kw = {"object_store_memory": int(max(n * 2.5, 1) * (1 << 30))} if dim == "large" else {}
    ray.init(num_cpus=num_cpus, **kw)
    try:
        res = _run_dimension(ray, dim, int(n) if dim != "large" else n)
        print(MARK + json.dumps(res), flush=True)
    finally:
        ray.shutdown()
    return 0


# --- the harness -----------------------------------------------------------------------------
def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pids(root: int) -> set[int]:
    """The run's processes: its session, and every descendant (workers may start sessions of their own)."""
    import psutil

    pids = set(_session_pids(root))
    try:
        pids.update(c.pid for c in psutil.Process(root).children(recursive=True))
    except psutil.Error:
        pass
    return pids


def _session_pids(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return float("inf")


def run_one(python: str, env: dict, framework: str, dim: str, n: float, num_cpus: int, timeout: float,
            min_free_gib: float) -> dict:
    """Runs one dimension in a fresh process tree; returns its result with ``peak_gib`` (or ``error``)."""
    cmd = [python, os.path.abspath(__file__), "--worker", framework, dim, str(n), str(num_cpus)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    peak = 0
    why = None
    deadline = time.monotonic() + timeout
    import threading

    lines: list[str] = []
    errs: list[str] = []
    t_out = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    t_err = threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True)
    t_out.start()
    t_err.start()
    while proc.poll() is None:
        peak = max(peak, sum(_pss_kib(p) for p in _tree_pids(proc.pid)))
        if _available_gib() < min_free_gib:
            why = f"stopped: this machine had under {min_free_gib} GiB of memory left"
        elif time.monotonic() > deadline:
            why = f"stopped: ran past {timeout:.0f} s"
        if why:
            break
        time.sleep(0.1)
    _kill_tree(proc)
    t_out.join(10)
    t_err.join(10)
    res: dict = {}
    for line in lines:
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
    res["peak_gib"] = peak / (1 << 20)
    if "seconds" not in res:
        tail = "".join(errs).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        res["error"] = why or tail[0][:200]
    return res


def _kill_tree(proc: subprocess.Popen) -> None:
    import signal

    tree = _tree_pids(proc.pid) if proc.poll() is None else set()
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for pid in tree | set(_session_pids(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _cell(res: dict | None) -> str:
    if res is None:
        return f"{'-':>30}"
    if "error" in res:
        return f"{'FAILED':>30}"
    cpu = f"{res['cpu_s']:>6.2f} cpu" if "cpu_s" in res else " " * 10
    return f"{res['seconds']:>8.2f} s {cpu} {res['peak_gib']:>5.2f} GiB"


def main(argv: list[str]) -> int:
    """``python -m benchmarks --envelope [--compare ray] [--scale F] [--N-DIM N] [-k DIMS]``.

    Returns:
        0 when every selected dimension completed under skate.
    """
    p = argparse.ArgumentParser(prog="python -m benchmarks --envelope", description=__doc__.splitlines()[0])
    p.add_argument("--compare", choices=["ray"], help="also run every dimension under Ray (.ray-venv)")
    p.add_argument("-k", dest="dims", default=",".join(DIMENSIONS), help="comma-separated dimensions to run")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every dimension's N (e.g. 0.01 for a quick run)")
    for dim, (n, unit, what) in DIMENSIONS.items():
        p.add_argument(f"--{dim}", type=float, default=None, help=f"{unit}: {what} [default: {n:g} x --scale]")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per dimension before it is stopped")
    p.add_argument("--min-free-gib", type=float, default=2.0, help="stop a run that leaves less memory free")
    p.add_argument("--json", dest="json_path", help="write the results as JSON here")
    args = p.parse_args(argv)
    dims = [d.strip() for d in args.dims.split(",") if d.strip()]
    for d in dims:
        if d not in DIMENSIONS:
            p.error(f"unknown dimension {d!r}; choose from {', '.join(DIMENSIONS)}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    frameworks = {"skate": (sys.executable, dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))))}
    if args.compare:
        python = os.environ.get("SKATE_RAY_PYTHON") or next(
            (c for c in (os.path.join(r, ".ray-venv", "bin", "python") for r in (os.getcwd(), root)) if os.path.exists(c)),
            None,
        )
        if python is None:
            p.error("no Ray interpreter: run `bash scripts/install_ray.sh` or set SKATE_RAY_PYTHON")
        frameworks["ray"] = (python, dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    rows = []
    for d in dims:
        given = getattr(args, d)
        n = given if given is not None else DIMENSIONS[d][0] * args.scale
        n = n if d == "large" else max(int(n), 1)
        row: dict = {"dimension": d, "n": n, "unit": DIMENSIONS[d][1]}
        for fw, (python, env) in frameworks.items():
            row[fw] = run_one(python, env, fw, d, n, args.num_cpus, args.timeout, args.min_free_gib)
            print(f"[{fw}] {d} ({n:g} {row['unit']}): {_cell(row[fw]).strip()}"
                  + (f"  {row[fw]['error']}" if "error" in row[fw] else ""), file=sys.stderr, flush=True)
        rows.append(row)
    cols = list(frameworks)
    two = len(cols) == 2
    print(f"{'dimension':<40}" + "".join(f"{('Ray' if c == 'ray' else c):>32}" for c in cols)
          + (f"{'Ray/skate':>11}{'(cpu)':>8}" if two else ""))
    for row in rows:
        n = f"{row['n']:g} GiB:" if row["dimension"] == "large" else f"{row['n']:,}"
        label = f"{n} {DIMENSIONS[row['dimension']][2]}"
        line = f"{label:<40}" + "".join(f"{_cell(row.get(c)):>32}" for c in cols)
        if two and "seconds" in row["skate"] and "seconds" in row["ray"]:
            line += f"{row['ray']['seconds'] / row['skate']['seconds']:>10.2f}x"
            if row["skate"].get("cpu_s") and "cpu_s" in row["ray"]:
                line += f"{row['ray']['cpu_s'] / row['skate']['cpu_s']:>7.2f}x"
        print(line)
        if row["dimension"] == "large":
            for c in cols:
                if "warm_gbps" in row[c]:
                    print(f"{'':<4}{c}: put+get {row[c]['gbps']:.2f} GB/s (fresh memory), {row[c]['warm_gbps']:.2f} "
                          f"GB/s (again); memcpy {row[c]['memcpy_gbps']:.2f} GB/s")
    errors = [(c, r["dimension"], r[c]["error"]) for r in rows for c in cols if "error" in r[c]]
    if errors:
        print("\nerrors:")
        for c, d, e in errors:
            print(f"  {c} {d}: {e}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any(c == "skate" for c, _, _ in errors) else 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
    sys.exit(main(sys.argv[1:]))
