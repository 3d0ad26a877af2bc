"""Monte Carlo estimate of pi on every local core, with progress.

Run: ``python -m skate.examples.pi [--samples N] [--tasks N]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import skate


@skate.remote
def sample(n: int, seed: int) -> int:
    """Counts how many of ``n`` random points fall inside the unit quarter circle."""
    import random

    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def main(argv: list[str] | None = None) -> int:
    """Runs the estimate; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=20_000_000, help="points in total")
    ap.add_argument("--tasks", type=int, default=0, help="tasks (default: 8 per core)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    skate.init()
    cpus = int(skate.cluster_resources().get("CPU", 1))
    tasks = args.tasks or 8 * cpus
    per_task = max(args.samples // tasks, 1)
    print(f"skate up in {time.perf_counter() - t0:.2f}s: {cpus} CPUs; {tasks} tasks x {per_task:,} samples")
    pending = [sample.remote(per_task, seed) for seed in range(tasks)]
    inside = done = 0
    while pending:
        ready, pending = skate.wait(pending, num_returns=1)
        inside += sum(skate.get(ready))
        done += len(ready)
        estimate = 4.0 * inside / (done * per_task)
        bar = "#" * (30 * done // tasks)
        sys.stdout.write(f"\r[{bar:<30}] {done}/{tasks} tasks  pi ~ {estimate:.6f}")
        sys.stdout.flush()
    elapsed = time.perf_counter() - t0
    estimate = 4.0 * inside / (tasks * per_task)
    print(f"\npi ~ {estimate:.6f} (error {abs(estimate - math.pi):.2e}) in {elapsed:.2f}s on {cpus} CPUs (pid {os.getpid()})")
    skate.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
