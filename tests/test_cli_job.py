"""`skate job submit|status|logs|stop|list|delete` through the command, on a `skate start` cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import wait_for
from test_cli import SKATE, _one_line_error

pytestmark = pytest.mark.timeout(180)

PY = sys.executable


def _sid(out: str) -> str:
    return re.search(r"Job '(\S+)' submitted successfully", out).group(1)


def test_submit_waits_and_streams_the_output(cli, tmp_path):
    cli.head()
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "helper.py").write_text("WORD = 'from-the-working-dir'\n")
    (wd / "main.py").write_text(
        "import os, skate, helper\n"
        "skate.init()\n"
        "@skate.remote\n"
        "def f(x):\n"
        "    return x * 10\n"
        "print('value', skate.get(f.remote(4)), helper.WORD, os.environ['GREETING'])\n"
    )
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"env_vars": {"GREETING": "hello"}}))
    out = cli.run("job", "submit", "--working-dir", str(wd), "--runtime-env", str(env_file), "--", PY, "main.py")
    assert "value 40 from-the-working-dir hello" in out.stdout, out.stdout
    sid = _sid(out.stdout)
    assert f"Job '{sid}' succeeded" in out.stdout
    assert "SUCCEEDED" in cli.run("job", "status", sid).stdout
    assert "value 40" in cli.run("job", "logs", sid).stdout
    jobs = json.loads(cli.run("job", "list", "--format", "json").stdout)
    assert [j["status"] for j in jobs if j["submission_id"] == sid] == ["SUCCEEDED"]
    assert "deleted" in cli.run("job", "delete", sid).stdout
    _one_line_error(cli.run("job", "status", sid, check=False), "does not exist")


def test_failed_job_exits_1(cli):
    cli.head()
    out = cli.run("job", "submit", "--runtime-env-json", '{"env_vars": {"CODE": "7"}}', "--",
                  PY, "-c", "'import os, sys; print(\"failing\"); sys.exit(int(os.environ[\"CODE\"]))'", check=False)
    assert out.returncode == 1, out
    assert "failing" in out.stdout and "exit code 7" in out.stderr, (out.stdout, out.stderr)


def test_no_wait_then_follow_and_stop(cli):
    cli.head()
    out = cli.run("job", "submit", "--no-wait", "--submission-id", "long-one", "--",
                  PY, "-c", "'import time; print(\"tick\", flush=True); time.sleep(600)'")
    assert _sid(out.stdout) == "long-one"
    wait_for(lambda: "tick" in cli.run("job", "logs", "long-one").stdout, 30, what="the job's output")
    follower = subprocess.Popen([*SKATE, "job", "logs", "long-one", "--follow"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli.env)
    try:
        assert "RUNNING" in cli.run("job", "status", "long-one").stdout
        stopped = cli.run("job", "stop", "long-one")
        assert "has ended: STOPPED" in stopped.stdout, stopped.stdout
        text, _ = follower.communicate(timeout=60)  # --follow returns once the job has ended
        assert "tick" in text
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert "already ended" in cli.run("job", "stop", "long-one").stdout


def test_job_errors_are_one_line(cli):
    cli.head()
    _one_line_error(cli.run("job", "submit", "--entrypoint-num-cpus", "-1", "--", "true", check=False),
                    "entrypoint_num_cpus")
    _one_line_error(cli.run("job", "submit", "--runtime-env-json", '{"conda": "x"}', "--", "true", check=False),
                    "conda")
    _one_line_error(cli.run("job", "list", check=False, SKATE_CLUSTER_TOKEN="wrong"), "rejected")
    _one_line_error(cli.run("job", "logs", "missing", check=False), "does not exist")
