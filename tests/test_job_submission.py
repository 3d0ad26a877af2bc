"""skate.job_submission: entrypoints run by the head, their status, logs, stop, env and working_dir.

Each test submits real shell commands to a real cluster's control store
(over its authenticated connection) and watches the processes it starts.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys

import psutil
import pytest
from conftest import pid_gone, wait_for

import skate
from skate.job_submission import JobDetails, JobStatus, JobSubmissionClient, JobType

pytestmark = pytest.mark.timeout(120)

PY = sys.executable


@pytest.fixture
def client(ray_start):
    return JobSubmissionClient(skate.get_runtime_context().gcs_address)


def _wait_status(client: JobSubmissionClient, sid: str, want: JobStatus, timeout: float = 60) -> JobDetails:
    def ended() -> JobDetails | None:
        info = client.get_job_info(sid)
        return info if info.status.is_terminal() else None

    info = wait_for(ended, timeout, interval=0.05, what=f"job {sid} to end")
    assert info.status == want, (info.status, info.message, client.get_job_logs(sid))
    return info


def _py(code: str) -> str:
    return f"{PY} -c {shlex.quote(code)}"


def test_submitted_script_succeeds_and_its_driver_joins_the_cluster(client, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import skate\n"
        "skate.init()\n"
        "@skate.remote\n"
        "def square(x):\n"
        "    return x * x\n"
        "print('squares', skate.get([square.remote(i) for i in range(4)]))\n"
        "print('job', skate.get_runtime_context().get_job_id())\n"
    )
    sid = client.submit_job(entrypoint=f"{PY} {script}", metadata={"owner": "me"})
    assert sid.startswith("skatesubmit_")
    info = _wait_status(client, sid, JobStatus.SUCCEEDED)
    logs = client.get_job_logs(sid)
    assert "squares [0, 1, 4, 9]" in logs, logs
    assert f"job {info.job_id}" in logs, (info.job_id, logs)  # the driver the entrypoint started is linked
    assert info.type == JobType.SUBMISSION and info.driver_exit_code == 0 and info.metadata == {"owner": "me"}
    assert info.message == "Job finished successfully." and info.end_time >= info.start_time
    assert client.get_job_status(info.job_id) == JobStatus.SUCCEEDED  # found by its driver's job id too
    listed = {j.submission_id: j for j in client.list_jobs()}
    assert listed[sid].status == JobStatus.SUCCEEDED
    me = skate.get_runtime_context().get_job_id()
    assert [j.type for j in client.list_jobs() if j.job_id == me] == [JobType.DRIVER]
    assert os.path.basename(client._request("job_get", sid)["log_path"]) == f"job-driver-{sid}.log"
    from skate.util import state

    (listed_state,) = state.list_jobs(filters=[("submission_id", "=", sid)])
    assert listed_state.type == "SUBMISSION" and listed_state.status == "SUCCEEDED"
    assert listed_state.job_id == info.job_id and state.get_job(sid).entrypoint == f"{PY} {script}"


def test_failing_entrypoint_is_failed_with_its_exit_code_and_output(client):
    sid = client.submit_job(entrypoint=_py("import sys; print('about to fail', flush=True); sys.exit(3)"))
    info = _wait_status(client, sid, JobStatus.FAILED)
    assert info.driver_exit_code == 3
    assert info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert "failed with exit code 3" in info.message and "about to fail" in info.message, info.message
    missing = client.submit_job(entrypoint="no-such-command-anywhere")
    assert "not found" in _wait_status(client, missing, JobStatus.FAILED).message


def test_stop_a_long_job(client):
    sid = client.submit_job(entrypoint=_py("import time; print('started', flush=True); time.sleep(600)"))
    wait_for(lambda: "started" in client.get_job_logs(sid), 30, what="the job to start")
    info = client.get_job_info(sid)
    assert info.status == JobStatus.RUNNING
    pids = [p.pid for p in psutil.Process(client._request("job_get", sid)["driver_pid"]).children(recursive=True)]
    assert client.stop_job(sid) is True
    info = _wait_status(client, sid, JobStatus.STOPPED, 30)
    assert info.message == "Job was intentionally stopped."
    assert all(pid_gone(p) for p in pids)
    assert client.stop_job(sid) is False  # already ended
    assert client.delete_job(sid) is True
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_info(sid)


def test_stop_kills_an_entrypoint_that_ignores_sigterm(client):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('deaf', flush=True); time.sleep(600)")
    sid = client.submit_job(entrypoint=_py(code))
    wait_for(lambda: "deaf" in client.get_job_logs(sid), 30, what="the job to start")
    assert client.stop_job(sid)
    info = _wait_status(client, sid, JobStatus.STOPPED, 30)
    assert info.driver_exit_code not in (0, None)


def test_env_vars_reach_the_entrypoint(client):
    sid = client.submit_job(
        entrypoint=_py("import os; print('FOO=' + os.environ['FOO'], 'ADDR=' + os.environ['SKATE_ADDRESS'])"),
        runtime_env={"env_vars": {"FOO": "bar baz"}},
    )
    _wait_status(client, sid, JobStatus.SUCCEEDED)
    logs = client.get_job_logs(sid)
    assert f"FOO=bar baz ADDR={skate.get_runtime_context().gcs_address}" in logs, logs
    assert client.get_job_info(sid).runtime_env == {"env_vars": {"FOO": "bar baz"}}
    # With no address, a connected driver's client talks to its own cluster.
    assert JobSubmissionClient().get_address() == skate.get_runtime_context().gcs_address


def test_working_dir_is_uploaded_and_is_the_entrypoints_cwd(client, tmp_path):
    wd = tmp_path / "project"
    (wd / "pkg").mkdir(parents=True)
    (wd / "helper_mod.py").write_text("VALUE = 'from-helper'\n")
    (wd / "pkg" / "__init__.py").write_text("")
    (wd / "pkg" / "data.txt").write_text("data-file\n")
    (wd / "big.bin").write_bytes(b"x" * 1000)
    (wd / "main.py").write_text(
        "import os, helper_mod\n"
        "print('helper', helper_mod.VALUE)\n"
        "print('data', open('pkg/data.txt').read().strip())\n"
        "print('big here', os.path.exists('big.bin'))\n"
    )
    sid = client.submit_job(entrypoint=f"{PY} main.py", runtime_env={"working_dir": str(wd), "excludes": ["*.bin"]})
    info = _wait_status(client, sid, JobStatus.SUCCEEDED)
    logs = client.get_job_logs(sid)
    assert "helper from-helper" in logs and "data data-file" in logs and "big here False" in logs, logs
    assert info.runtime_env["working_dir"].startswith("gcs://_skate_pkg_")
    # The same folder again: the same package, not uploaded twice.
    again = client.submit_job(entrypoint=f"{PY} main.py", runtime_env={"working_dir": str(wd), "excludes": ["*.bin"]})
    assert _wait_status(client, again, JobStatus.SUCCEEDED).runtime_env == info.runtime_env


def test_tail_job_logs_streams_until_the_end(client):
    sid = client.submit_job(entrypoint=_py("import time\nfor i in range(5):\n    print('line', i, flush=True); time.sleep(0.05)"))

    async def tail() -> str:
        return "".join([chunk async for chunk in client.tail_job_logs(sid)])

    text = asyncio.run(tail())
    assert [ln for ln in text.splitlines() if ln.startswith("line")] == [f"line {i}" for i in range(5)]
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED


def test_refusals(client):
    sid = client.submit_job(entrypoint=_py("import time; time.sleep(600)"), submission_id="mine")
    assert sid == "mine"
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id="mine")
    with pytest.raises(RuntimeError, match="submission_id"):
        client.submit_job(entrypoint="true", submission_id="../escape")
    with pytest.raises(RuntimeError, match="non-terminal"):
        client.delete_job("mine")
    assert client.stop_job("mine")
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_status("nope")
    with pytest.raises(ValueError, match="not both"):
        client.submit_job(entrypoint="true", job_id="a", submission_id="b")
    with pytest.raises(ValueError, match="pip"):
        client.submit_job(entrypoint="true", runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="entrypoint_num_cpus"):
        client.submit_job(entrypoint="true", entrypoint_num_cpus=-1)
    with pytest.raises(ValueError, match="may not name 'CPU'"):
        client.submit_job(entrypoint="true", entrypoint_resources={"CPU": 1})
    with pytest.raises(ValueError, match="HOST:PORT"):
        JobSubmissionClient("http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="not HTTP"):
        JobSubmissionClient(skate.get_runtime_context().gcs_address, headers={"a": "b"})
    _wait_status(client, "mine", JobStatus.STOPPED)


def test_entrypoint_resources_are_held_while_the_job_runs(client):
    hold = _py("import time; print('holding', flush=True); time.sleep(600)")
    first = client.submit_job(entrypoint=hold, entrypoint_num_cpus=2)
    wait_for(lambda: "holding" in client.get_job_logs(first), 30, what="the first job to start")
    wait_for(lambda: skate.available_resources().get("CPU", 0) == 0, 10, what="its 2 CPUs to be taken")
    second = client.submit_job(entrypoint=_py("print('second ran')"), entrypoint_num_cpus=1)
    info = client.get_job_info(second)
    assert info.status == JobStatus.PENDING and "waiting for {'CPU': 1.0}" in info.message, info
    assert client.stop_job(first)
    _wait_status(client, first, JobStatus.STOPPED)
    _wait_status(client, second, JobStatus.SUCCEEDED)  # it got the CPU once the first gave it back
    assert "second ran" in client.get_job_logs(second)
    wait_for(lambda: skate.available_resources().get("CPU", 0) == 2, 10, what="the CPUs to come back")
    never = client.submit_job(entrypoint="true", entrypoint_resources={"unobtainium": 1})
    info = _wait_status(client, never, JobStatus.FAILED)
    assert info.error_type == "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE" and "unobtainium" in info.message, info
    waiting = client.submit_job(entrypoint="true", entrypoint_num_cpus=3)  # more than the head has free... or ever
    assert _wait_status(client, waiting, JobStatus.FAILED).error_type == "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE"


def test_wrong_token_is_refused(ray_start, monkeypatch):
    monkeypatch.setenv("SKATE_CLUSTER_TOKEN", "not-the-token")
    with pytest.raises(ConnectionError, match="rejected"):
        JobSubmissionClient(skate.get_runtime_context().gcs_address)


def test_running_jobs_stop_with_the_cluster():
    skate.init(num_cpus=1)
    try:
        client = JobSubmissionClient(skate.get_runtime_context().gcs_address)
        sid = client.submit_job(entrypoint=_py("import time; print('up', flush=True); time.sleep(600)"))
        wait_for(lambda: "up" in client.get_job_logs(sid), 30, what="the job to start")
        pid = client._request("job_get", sid)["driver_pid"]
    finally:
        skate.shutdown()
    wait_for(lambda: pid_gone(pid), 15, what="the entrypoint to be stopped with its cluster")


@pytest.mark.timeout(180)
def test_jobs_survive_a_control_store_restart(redis_url, tmp_path):
    from conftest import gcs_server_pid

    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_storage": redis_url})
    try:
        client = JobSubmissionClient(c.address)
        done = client.submit_job(entrypoint="echo finished-before")
        _wait_status(client, done, JobStatus.SUCCEEDED)
        gate = tmp_path / "gate"
        code = f"import os, time\nprint('waiting', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        running = client.submit_job(entrypoint=_py(code))
        wait_for(lambda: "waiting" in client.get_job_logs(running), 30, what="the job to start")
        old = gcs_server_pid(c)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: gcs_server_pid(c) not in (0, old), 30, what="a new control store")
        client = JobSubmissionClient(c.address)
        assert client.get_job_status(done) == JobStatus.SUCCEEDED  # the record came back from Redis
        assert "finished-before" in client.get_job_logs(done)
        assert client.get_job_status(running) == JobStatus.RUNNING  # adopted by the new control store
        gate.touch()
        info = _wait_status(client, running, JobStatus.SUCCEEDED)
        assert info.driver_exit_code == 0
    finally:
        c.shutdown()


def _signature(fn) -> str:
    import inspect

    parts, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return "(" + ", ".join(parts) + ")"


# Ray 2.60's documented signatures (docs.ray.io, ray.job_submission and ray.util.state).
RAY_SIGNATURES = {
    JobSubmissionClient.__init__: "(self, address=None, create_cluster_if_needed=False, cookies=None, metadata=None, "
                                  "headers=None, verify=True)",
    JobSubmissionClient.submit_job: "(self, *, entrypoint, job_id=None, runtime_env=None, metadata=None, "
                                    "submission_id=None, entrypoint_num_cpus=None, entrypoint_num_gpus=None, "
                                    "entrypoint_memory=None, entrypoint_resources=None)",
    JobSubmissionClient.stop_job: "(self, job_id)",
    JobSubmissionClient.delete_job: "(self, job_id)",
    JobSubmissionClient.get_job_info: "(self, job_id)",
    JobSubmissionClient.list_jobs: "(self)",
    JobSubmissionClient.get_job_status: "(self, job_id)",
    JobSubmissionClient.get_job_logs: "(self, job_id)",
    JobSubmissionClient.tail_job_logs: "(self, job_id)",
}


def test_signatures_follow_ray():
    from skate.util import state

    listing = "(address=None, filters=None, limit=100, timeout=30, detail=False, raise_on_missing_output=True, _explain=False)"
    sigs = dict(RAY_SIGNATURES)
    for name in ("list_objects", "list_workers"):
        sigs[getattr(state, name)] = listing
    sigs[state.summarize_objects] = "(address=None, timeout=30, raise_on_missing_output=True, _explain=False)"
    sigs[state.get_worker] = "(id, address=None, timeout=30, _explain=False)"
    sigs[state.get_objects] = "(id, address=None, timeout=30, _explain=False)"
    sigs[state.get_job] = "(id, address=None, timeout=30, _explain=False)"
    sigs[state.list_logs] = "(address=None, node_id=None, node_ip=None, glob_filter=None, timeout=30)"
    sigs[state.get_log] = (
        "(address=None, node_id=None, node_ip=None, filename=None, actor_id=None, task_id=None, pid=None, "
        "follow=False, tail=-1, timeout=30, suffix='out', encoding='utf-8', errors='strict', submission_id=None, "
        "attempt_number=0, _interval=None, filter_ansi_code=False)")
    for fn, want in sigs.items():
        assert _signature(fn) == want, fn.__qualname__
    assert [s.value for s in JobStatus] == ["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]
    assert JobStatus.STOPPED.is_terminal() and not JobStatus.RUNNING.is_terminal()
