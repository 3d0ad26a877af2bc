"""`skate logs|memory|stack|get`, `list objects|workers` and `summary objects` through the command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import wait_for
from test_cli import SKATE, _one_line_error

pytestmark = pytest.mark.timeout(180)

_DRIVER = """
import os, sys, skate
skate.init()

@skate.remote
def make(n):
    print("making", n, flush=True)
    return b"m" * n

@skate.remote
class Napper:
    def nap_here(self, gate):
        import time
        print("napper-started", flush=True)
        while not os.path.exists(gate):
            time.sleep(0.01)

big = make.remote(500_000)
skate.get(big)
napper = Napper.remote()
napping = napper.nap_here.remote({gate!r})
print("READY", big.hex(), napper._actor_id.hex(), os.getpid(), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def busy(cli, tmp_path):
    """A head with a driver that holds a 500 kB object and an actor stuck in nap_here()."""
    cli.head("--num-cpus", "2")
    gate = tmp_path / "gate"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_DRIVER.format(gate=str(gate)))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cli.env)
    try:
        line = [""]
        while line[0] != "READY":
            line = driver.stdout.readline().split() or [""]
            assert line[0] or driver.poll() is None, driver.stderr.read()
        yield {"object": line[1], "actor": line[2], "pid": int(line[3])}
    finally:
        gate.touch()
        driver.communicate("\n", timeout=60)


def test_memory_and_list_objects(cli, busy):
    out = cli.run("memory").stdout
    row = next(ln for ln in out.splitlines() if busy["object"] in ln)
    assert str(busy["pid"]) in row and "DRIVER" in row and "LOCAL_REFERENCE" in row and "500009" in row, out
    assert "USED_BY_PENDING_TASK" in out
    assert "0.48 MB" in cli.run("memory", "--units", "MB", "--stats-only").stdout
    objs = json.loads(cli.run("list", "objects", "--format", "json").stdout)
    assert any(o["object_id"] == busy["object"] and o["object_size"] >= 500_000 for o in objs)
    summary = json.loads(cli.run("summary", "objects", "--format", "json").stdout)
    assert summary[0]["call_site"] == "disabled" and summary[0]["total_objects"] >= 2
    got = json.loads(cli.run("get", "objects", busy["object"], "--format", "json").stdout)
    assert [o["pid"] for o in got] == [busy["pid"]]


def test_list_and_get_workers_actors_nodes_jobs_tasks(cli, busy):
    workers = json.loads(cli.run("list", "workers", "--format", "json").stdout)
    napper = next(w for w in workers if w["actor_id"] == busy["actor"])
    assert napper["worker_type"] == "WORKER" and napper["is_alive"]
    assert any(w["worker_type"] == "DRIVER" and w["pid"] == busy["pid"] for w in workers)
    assert json.loads(cli.run("get", "workers", napper["worker_id"], "--format", "json").stdout)["pid"] == napper["pid"]
    actor = json.loads(cli.run("get", "actors", busy["actor"], "--format", "json").stdout)
    assert actor["class_name"] == "Napper" and actor["state"] == "ALIVE"
    node = json.loads(cli.run("list", "nodes", "--format", "json").stdout)[0]
    assert json.loads(cli.run("get", "nodes", node["node_id"], "--format", "json").stdout)["is_head_node"]
    job = next(j for j in json.loads(cli.run("list", "jobs", "--format", "json").stdout) if j["driver_pid"] == busy["pid"])
    assert json.loads(cli.run("get", "jobs", job["job_id"], "--format", "json").stdout)["status"] == "RUNNING"

    def make_task() -> list:
        out = cli.run("list", "tasks", "--filter", "name=make", "--format", "json").stdout
        return [t for t in json.loads(out) if t["state"] == "FINISHED"]

    task = wait_for(make_task, 30, what="the finished task to be listed")[0]
    assert json.loads(cli.run("get", "tasks", task["task_id"], "--format", "json").stdout)["name"] == "make"
    _one_line_error(cli.run("get", "actors", "ab" * 16, check=False), "no actor with id")


def test_logs(cli, busy):
    listing = cli.run("logs").stdout
    for category in ("gcs_server:", "raylet:", "worker_out:"):
        assert category in listing, listing
    gcs_name = re.search(r"gcs-\d+\.log", listing).group(0)
    assert cli.run("logs", "gcs-*").returncode == 0  # one file: printed
    wait_for(lambda: "napper-started" in cli.run("logs", "--actor-id", busy["actor"]).stdout, 30,
             what="the actor's output in its worker's log")
    workers = json.loads(cli.run("list", "workers", "--format", "json").stdout)
    napper_pid = next(w["pid"] for w in workers if w["actor_id"] == busy["actor"])
    assert "napper-started" in cli.run("logs", "--pid", str(napper_pid), "--tail", "5").stdout
    assert gcs_name in cli.run("logs", "*.log").stdout  # several files: listed
    _one_line_error(cli.run("logs", "no-such-file*", check=False), "no log file matches")


def test_logs_follow_a_job(cli):
    cli.head()
    cli.run("job", "submit", "--no-wait", "--submission-id", "ticker", "--", sys.executable, "-c",
            "'import time\nfor i in range(600):\n    print(\"tick\", i, flush=True); time.sleep(0.05)'")
    follower = subprocess.Popen([*SKATE, "logs", "--submission-id", "ticker", "--follow"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli.env)
    try:
        seen = []
        for line in follower.stdout:
            seen.append(line)
            if len(seen) >= 5:
                break
        assert all(ln.startswith("tick") for ln in seen), seen
    finally:
        follower.kill()
        follower.wait()
        cli.run("job", "stop", "ticker")


def test_stack_shows_every_process_on_this_machine(cli, busy):
    def napping() -> str | None:
        out = cli.run("stack").stdout
        return out if "in nap_here" in out else None

    out = wait_for(napping, 30, what="the actor's stack to show nap_here()")
    assert "=== worker pid=" in out and f"(actor {busy['actor']})" in out
    assert f"=== driver pid={busy['pid']}" in out
