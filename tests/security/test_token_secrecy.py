"""The cluster token stays out of environments, command lines and output.

Daemons and workers read it from the owner-only token file; it is never in
a process's environment (where every subprocess of a task would inherit it,
and ``/proc/<pid>/environ`` shows it), on a command line (``ps``), or in
what skate prints.
"""

from __future__ import annotations

import glob
import os
import subprocess

import psutil
import pytest

import skate


@skate.remote(num_cpus=0)
def what_a_task_sees():
    with open("/proc/self/environ", "rb") as f:
        proc_environ = f.read().decode(errors="replace")
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    env_cmd = subprocess.run(["env"], capture_output=True, text=True, timeout=30).stdout
    child = subprocess.run(["cat", "/proc/self/environ"], capture_output=True, timeout=30).stdout.decode(errors="replace")
    return {
        "pid": os.getpid(),
        "os.environ": repr(dict(os.environ)),
        "/proc/self/environ": proc_environ,
        "cmdline": cmdline,
        "env in a subprocess": env_cmd,
        "a subprocess's /proc/self/environ": child,
    }


def _proc_text(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.timeout(120)
def test_token_is_in_no_environment_command_line_or_output(cluster, monkeypatch, capfd):
    token = cluster._info["token"].decode()
    # A user who exported the token (as for joining from another host) and
    # starts a node from that shell: it must not reach the node's workers.
    monkeypatch.setenv("SKATE_CLUSTER_TOKEN", token)
    cluster.add_node(num_cpus=1, resources={"second": 1})
    skate.init(address=cluster.address)
    seen = [
        skate.get(what_a_task_sees.remote(), timeout=60),
        skate.get(what_a_task_sees.options(resources={"second": 1}).remote(), timeout=60),
    ]
    for report in seen:
        for where, text in report.items():
            if where != "pid":
                assert token not in text, f"a task sees the token in {where}"
    # Every process of the cluster: control store, node daemons, zygotes, workers.
    me = psutil.Process()
    procs = me.children(recursive=True)
    pids = {p.pid for p in procs}
    assert {r["pid"] for r in seen} <= pids
    assert len(procs) >= 5
    for p in procs:
        for name in ("environ", "cmdline"):
            assert token not in _proc_text(p.pid, name), f"/proc/{p.pid}/{name} ({p.name()}) holds the token"
    skate.shutdown()
    out, err = capfd.readouterr()
    assert token not in out and token not in err


def test_wrong_token_error_does_not_echo_tokens(cluster):
    right = cluster._info["token"].decode()
    wrong = os.urandom(24).hex()
    with pytest.raises(ConnectionError) as info:
        skate.init(address=cluster.address, _token=wrong)
    assert right not in str(info.value) and wrong not in str(info.value)


@pytest.mark.timeout(180)
def test_cli_head_does_not_print_the_token():
    """`skate start --head` says where the token is, not what it is (terminal scrollback, CI logs)."""
    import shutil
    import sys
    import tempfile

    from skate._private import node

    temp_dir = tempfile.mkdtemp(prefix="sk-")  # short: Unix socket paths have a length limit
    env = dict(os.environ, SKATE_TEMP_DIR=temp_dir)
    cli = [sys.executable, "-m", "skate.cli"]
    try:
        out = subprocess.run([*cli, "start", "--head", "--port", str(node.free_port()), "--num-cpus", "1"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        token_files = glob.glob(os.path.join(temp_dir, "session_*", "token"))
        assert len(token_files) == 1
        with open(token_files[0]) as f:
            token = f.read().strip()
        assert token not in out.stdout and token not in out.stderr
        assert token_files[0] in out.stdout  # it says where to find it
        # Nor do the daemons' logs hold it.
        logs = glob.glob(os.path.join(temp_dir, "logs", "session_*", "*.log"))
        assert logs
        for path in logs:
            with open(path, errors="replace") as f:
                assert token not in f.read(), path
    finally:
        subprocess.run([*cli, "stop"], capture_output=True, timeout=60, env=env)
        shutil.rmtree(temp_dir, ignore_errors=True)
