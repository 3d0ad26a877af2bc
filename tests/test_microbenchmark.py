"""The benchmark command: its metric names, a short real run, its JSON.

Only that the harness runs and reports; speed itself is measured by
running the benchmark, not by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RAY_METRICS = [
    "single_client_get_calls", "single_client_put_calls", "multi_client_put_calls",
    "single_client_put_gigabytes", "multi_client_put_gigabytes", "single_client_tasks_and_get_batch",
    "single_client_get_object_containing_10k_refs", "single_client_wait_1k_refs",
    "single_client_tasks_sync", "single_client_tasks_async", "multi_client_tasks_async",
    "1_1_actor_calls_sync", "1_1_actor_calls_async", "1_1_actor_calls_concurrent",
    "1_n_actor_calls_async", "n_n_actor_calls_async", "n_n_actor_calls_with_arg_async",
    "1_1_async_actor_calls_sync", "1_1_async_actor_calls_async",
    "1_1_async_actor_calls_with_args_async", "1_n_async_actor_calls_async",
    "n_n_async_actor_calls_async",
]  # fmt: skip
OURS = ["cold_start", "idle_cluster_rss_mb", "large_arg_task_gigabytes"]

pytestmark = pytest.mark.timeout(180)


def _skate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skate.cli", "microbenchmark", *args], capture_output=True, text=True, timeout=150
    )


def test_lists_every_metric_under_rays_names():
    out = _skate("--list")
    assert out.returncode == 0, out.stderr
    names = [line.split(" (")[0] for line in out.stdout.splitlines()]
    for metric in RAY_METRICS + OURS:
        assert metric in names, f"{metric} missing from {names}"


def test_help_is_the_benchmarks_own():
    out = _skate("--help")
    assert out.returncode == 0, out.stderr
    for option in ("-k", "--compare", "--json", "--duration", "--repeat"):
        assert option in out.stdout


def test_a_short_run_prints_the_table_and_writes_json(tmp_path):
    path = tmp_path / "out.json"
    out = _skate("-k", "^(single_client_get_calls|1_1_actor_calls_sync)$", "--duration", "0.3", "--json", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "single_client_get_calls" in out.stdout
    assert "unix_socket_roundtrip_us" in out.stdout  # the baselines of the same run
    rows = json.loads(path.read_text())
    by_name = {r["metric"]: r for r in rows}
    assert {"single_client_get_calls", "1_1_actor_calls_sync"} <= set(by_name)
    for name in ("single_client_get_calls", "1_1_actor_calls_sync"):
        row = by_name[name]
        assert set(row) >= {"metric", "unit", "skate", "ray", "ratio"}
        assert row["skate"] > 0
        assert row["ray"] is None  # Ray was not asked for


def test_the_ab_sign_test_is_the_binomial_tail():
    from benchmarks.ab import sign_test

    assert sign_test(0, 10) == 1.0
    assert sign_test(10, 10) == 1 / 1024
    assert sign_test(8, 10) == (45 + 10 + 1) / 1024  # 8, 9 or 10 of 10 lost


def test_ab_interleaves_two_revisions_and_reports_each_metric(tmp_path):
    """A revision against the working tree: both clusters up, windows taken in
    turn; the row names the metric, its median ratio and the rounds lost."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def checkouts() -> set:
        listed = subprocess.run(["git", "-C", root, "worktree", "list"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in listed.splitlines() if "skate-ab-" in line}

    before = checkouts()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "HEAD", "-k", "^single_client_get_calls$", "--rounds", "4",
         "--window", "0.1"],
        capture_output=True, text=True, timeout=150, cwd=root,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("single_client_get_calls")]
    assert len(rows) == 1, out.stdout
    name, ratio, _quartiles, lost, p, rev_rate, tree_rate = rows[0]
    assert float(ratio) > 0 and float(rev_rate) > 0 and float(tree_rate) > 0
    assert lost.endswith("/4") and 0 < float(p) <= 1
    assert checkouts() == before  # the revision's checkout is gone
