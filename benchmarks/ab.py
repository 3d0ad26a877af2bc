"""``python -m benchmarks.ab REV``: skate at ``REV`` against the working tree, interleaved.

This machine's speed drifts by tens of percent within minutes, so two runs of
the whole microbenchmark one after the other cannot tell a 5% change from
noise.  Here both versions run their clusters at once (an idle cluster costs
about 1% of a core) and take turns: each metric is timed in short windows,
one window of each version per round, in a random order, and every round
gives one ratio.  The report is the median ratio (this tree / ``REV``), its
quartiles, and a sign test: how many rounds this tree lost, and the chance
of losing that many or more if both were equally fast::

    python -m benchmarks.ab 1efa74b -k sync --rounds 30 --window 0.5

A process keeps the speed it was born with: two runs of the same code differ
by a few percent for as long as they live (hash seeds, memory layout), so a
long-lived pair of sides shows a "significant" difference between identical
trees.  Both sides therefore restart every ``--restart-every`` rounds (fresh
clusters, started in a random order), and each metric's rounds spread over
several pairs.  ``python -m benchmarks.ab HEAD`` (the tree against itself)
shows what noise looks like on this machine.

Both versions run the workloads of this tree (``skate/_private/bench_workloads.py``),
with the interpreter that runs this command (or ``--rev-python`` for ``REV``).  ``REV`` is checked out in a temporary git worktree, removed at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "@@skate-ab "
SKIP = ("cold_start", "idle_cluster_rss_mb", "idle_cluster_processes")

#: One side: loads this tree's workloads by path, imports the skate on its
#: PYTHONPATH, then times the metric named on each line of stdin.
CHILD = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("skate_bench_workloads", sys.argv[1])
w = importlib.util.module_from_spec(spec); sys.modules[spec.name] = w; spec.loader.exec_module(w)
import skate as ray
ray.init(num_cpus=int(sys.argv[2]))
bench = w.Bench(ray, 1.0, int(sys.argv[2]))
print("@@skate-ab ready", flush=True)
for line in sys.stdin:
    name, window = line.split()
    bench.duration = float(window)
    try:
        rate = w.WORKLOADS[name][1](ray, bench)
    except Exception as e:  # reported, the run goes on
        rate = float("nan"); print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        bench.cleanup()
    print(f"@@skate-ab {rate}", flush=True)
ray.shutdown()
"""


def sign_test(lost: int, n: int) -> float:
    """P(at least ``lost`` of ``n`` fair coin flips come up "lost")."""
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n


class Side:
    """One version's driver process, answering one metric window at a time."""

    def __init__(self, label: str, tree: str, num_cpus: int, python: str, extra_env: dict | None = None) -> None:
        self.label = label
        env = dict(os.environ, PYTHONPATH=tree, **(extra_env or {}))
        workloads = os.path.join(ROOT, "skate", "_private", "bench_workloads.py")
        self.proc = subprocess.Popen(
            [python, "-c", CHILD, workloads, str(num_cpus)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=env,
        )  # fmt: skip
        self._answer()

    def _answer(self) -> str:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return line[len(MARK) :].strip()
        raise RuntimeError(f"the {self.label} side ended early (exit status {self.proc.wait()})")

    def rate(self, metric: str, window: float) -> float:
        self.proc.stdin.write(f"{metric} {window}\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="the git revision to compare against (e.g. a commit before a change)")
    p.add_argument("-k", default="", help="only metrics whose name matches this regular expression")
    p.add_argument("--rounds", type=int, default=20, help="windows per metric and version (default 20)")
    p.add_argument("--window", type=float, default=0.5, help="seconds per timed window (default 0.5)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--rev-python", default=sys.executable, help="the interpreter for REV (default: this one)")
    p.add_argument("--restart-every", type=int, default=5,
                   help="rounds after which both sides restart as fresh processes (default 5; 0: never)")
    p.add_argument("--tree-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for this tree's side only (e.g. SKATE_TASK_EVENTS_MAX=0: "
                   "what a feature costs); may be given more than once")
    args = p.parse_args(argv)
    if args.restart_every < 0:
        p.error("--restart-every takes a number of rounds, or 0 for never")
    if any("=" not in kv for kv in args.tree_env):
        p.error("--tree-env takes NAME=VALUE")
    tree_env = dict(kv.split("=", 1) for kv in args.tree_env)

    sys.path.insert(0, ROOT)
    from skate._private import bench_workloads

    metrics = [m for m in bench_workloads.WORKLOADS if m not in SKIP and re.search(args.k, m)]
    base_tree = tempfile.mkdtemp(prefix="skate-ab-")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", base_tree, args.rev], check=True)
    sides: dict[str, Side] = {}
    made = {"rev": (args.rev, base_tree, args.num_cpus, args.rev_python), "tree": ("tree", ROOT, args.num_cpus, sys.executable, tree_env)}

    def restart() -> None:
        for key in list(sides):
            sides.pop(key).close()
        for key in random.sample(list(made), len(made)):  # (one by one: a side that fails to start leaves none running)
            sides[key] = Side(*made[key])

    try:
        restart()
        print(f"{'metric':44} {'ratio':>6} {'quartiles':>13} {'lost':>6} {'p':>6}  {args.rev:>10} {'tree':>10}")
        for m, metric in enumerate(metrics):
            ratios, rates = [], {"rev": [], "tree": []}
            for r in range(args.rounds):
                if args.restart_every and (m or r) and r % args.restart_every == 0:
                    restart()
                order = list(sides)
                random.shuffle(order)
                got = {k: sides[k].rate(metric, args.window) for k in order}
                for k, v in got.items():
                    rates[k].append(v)
                if got["rev"] > 0 and not math.isnan(got["rev"] + got["tree"]):
                    ratios.append(got["tree"] / got["rev"])
            if len(ratios) < 4:
                print(f"{metric:44} failed")
                continue
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            lost = sum(r < 1 for r in ratios)
            print(
                f"{metric:44} {statistics.median(ratios):6.3f} {f'{q1:.3f}-{q3:.3f}':>13} {f'{lost}/{len(ratios)}':>6} "
                f"{sign_test(lost, len(ratios)):6.3f}  {statistics.median(rates['rev']):10.4g} "
                f"{statistics.median(rates['tree']):10.4g}",
                flush=True,
            )
    finally:
        for side in sides.values():
            side.close()
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_tree], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
