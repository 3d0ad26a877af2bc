"""Submitted jobs: the control store runs each job's entrypoint on the head and watches it.

::

    job_submit --> record PENDING (table "job_submissions", in the control store's storage)
        |  entrypoint resources: a lease pinned to the head node, held until the job ends
        |  working_dir: the package from the KV table, unpacked under the session folder
        v
    /bin/sh -c ENTRYPOINT   (own process group; SKATE_ADDRESS + token set, so its
        |                    skate.init() joins this cluster; output -> logs/job-driver-<id>.log)
        v  RUNNING
    exit 0 --> SUCCEEDED; exit != 0 --> FAILED (with the log's tail); job_stop:
    SIGTERM to the group, SIGKILL after ``STOP_GRACE_S`` --> STOPPED

The entrypoint runs under a shell that writes its exit code to a file next to
the log, so a control store restarted from durable storage adopts the jobs
still running (by pid) and learns how they ended (their entrypoint
resources are given back then: the leases were held by the old one).  A control store that is
stopped stops its jobs.  A driver started by an entrypoint (its pid is the
entrypoint's or a descendant's) is linked to the submission: its job id is
the submission's ``job_id``.  The message types are in ``job_messages``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import string
import subprocess
import time
from collections.abc import Callable
from typing import Any

from skate._private.config import CONFIG
from skate._private.gcs.storage import Storage, Table

# psutil, logs and runtime_env_packaging are imported when a job is
# submitted: a control store that never runs one starts without them.

log = logging.getLogger(__name__)

TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")
#: Seconds between SIGTERM and SIGKILL when a job is stopped (Ray waits 3 s too).
STOP_GRACE_S = float(os.environ.get("SKATE_JOB_STOP_WAIT_TIME_S", "3"))
#: runtime_env fields a job entrypoint honours.
ENTRYPOINT_RUNTIME_ENV = ("env_vars", "working_dir", "excludes")
_LOG_TAIL_CHARS = 20_000
# It names the job's log file, so no path separators.
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Runs the entrypoint in a child shell and keeps its exit code in a file ($1).
_RUNNER = 'sh -c "$0"; rc=$?; echo $rc > "$1"; exit $rc'
# Variables of the control store's own process that the entrypoint must not inherit
# (SKATE_LOG_DIR: ``logs.ENV``).
_PRIVATE_ENV = ("SKATE_READY_FD", "SKATE_PARENT_PID", "SKATE_LOG_DIR", "RAY_ADDRESS")


def job_hex(job: int) -> str:
    """A driver job's id as the runtime context prints it."""
    return int(job).to_bytes(4, "little").hex()


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_runtime_env(runtime_env: Any) -> dict:
    """The runtime_env an entrypoint can honour (``env_vars``, ``working_dir``, ``excludes``).

    Raises:
        ValueError: another field, or a malformed one.
    """
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise ValueError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    other = sorted(set(runtime_env) - set(ENTRYPOINT_RUNTIME_ENV))
    if other:
        raise ValueError(
            f"runtime_env field(s) {other} cannot be honoured for a job's entrypoint: "
            f"skate supports {list(ENTRYPOINT_RUNTIME_ENV)} there"
        )
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise ValueError("runtime_env 'env_vars' must map strings to strings")
    return runtime_env


def check_entrypoint_resources(body: dict) -> None:
    """Checks the entrypoint's resources (reserved on the head node while the job runs).

    Raises:
        ValueError: a negative or non-numeric amount, or CPU/GPU/memory named in ``entrypoint_resources``.
    """
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, not {v!r}")
    res = body.get("entrypoint_resources") or {}
    if not isinstance(res, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in res.values()):
        raise ValueError(f"entrypoint_resources must map resource names to non-negative numbers, not {res!r}")
    for key in ("CPU", "GPU", "memory"):
        if key in res:
            raise ValueError(f"entrypoint_resources may not name {key!r}; use entrypoint_num_cpus, "
                             "entrypoint_num_gpus or entrypoint_memory")


def entrypoint_shape(rec: dict) -> dict:
    """The resources a job's entrypoint holds while it runs (zero amounts left out)."""
    shape = {"CPU": rec.get("entrypoint_num_cpus"), "GPU": rec.get("entrypoint_num_gpus"),
             "memory": rec.get("entrypoint_memory"), **(rec.get("entrypoint_resources") or {})}
    return {k: float(v) for k, v in shape.items() if v}


class JobManager:
    """Submitted jobs' records and entrypoint processes (in the control store's process)."""

    def __init__(self, storage: Storage, kv: Table, drivers: Table, token: bytes, session_dir: str | None,
                 head_node: Callable[[], dict | None]) -> None:
        self.table = Table(storage, "job_submissions")
        self.kv = kv
        self.drivers = drivers
        self.token = token
        self.session_dir = session_dir
        self.head_node = head_node
        #: ``host:port`` the entrypoints' drivers join (set once the control store listens).
        self.address = ""
        self.procs: dict[str, Any] = {}  # a Popen, or a psutil.Process adopted after a restart
        self.kill_at: dict[str, float] = {}
        self._starting: dict[str, asyncio.Future] = {}
        self.leases: dict[str, Any] = {}  # submission id -> the connection holding its entrypoint's lease
        for sid, rec in self.table.items():
            if rec["status"] not in TERMINAL:
                self._adopt(sid, rec)

    def handlers(self) -> dict:
        """The request handlers this manager serves, by method."""
        return {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_job_")}

    # --- requests ---------------------------------------------------------------------------
    def on_job_submit(self, conn: Any, body: dict, bufs: list) -> dict:
        entrypoint = body.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("a job needs a non-empty entrypoint command")
        runtime_env = check_runtime_env(body.get("runtime_env"))
        check_entrypoint_resources(body)
        from skate._private import runtime_env_packaging

        wd = runtime_env.get("working_dir")
        if wd is not None and not runtime_env_packaging.is_package_uri(wd):
            raise ValueError(f"runtime_env 'working_dir' {wd!r} was not uploaded (JobSubmissionClient uploads local folders)")
        sid = body.get("submission_id") or "skatesubmit_" + "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(16))
        if not isinstance(sid, str) or not _SUBMISSION_ID.match(sid):
            raise ValueError(f"submission_id {sid!r}: use 1 to 128 letters, digits, '_', '-' or '.'")
        if sid in self.table:
            raise ValueError(f"Job with submission_id {sid} already exists. Please use a different submission_id.")
        logs_dir = self._logs_dir()
        if not logs_dir:
            raise RuntimeError("this control store has no log folder, so it cannot run job entrypoints")
        rec = dict(body, submission_id=sid, type="SUBMISSION", job_id=None, status="PENDING",
                   message="Job has not started yet.", error_type=None, start_time=_now_ms(), end_time=None,
                   driver_exit_code=None, driver_pid=None, stop_requested=False, runtime_env=runtime_env or None,
                   log_path=os.path.join(logs_dir, f"job-driver-{sid}.log"), created=None)
        if entrypoint_shape(rec):
            rec["message"] = f"Job is waiting for {entrypoint_shape(rec)} on the head node."
        self.table.set(sid, rec)
        self._starting[sid] = asyncio.ensure_future(self._start(sid))
        self._starting[sid].add_done_callback(lambda t: self._starting.pop(sid, None))
        return rec

    def on_job_get(self, conn: Any, job_id: str, bufs: list) -> dict | None:
        rec = self.table.get(job_id)
        if rec is not None:
            return rec
        for rec in self.table.values():
            if rec.get("job_id") == job_id:
                return rec
        for job, drv in self.drivers.items():
            if job_hex(job) == job_id:
                return self._driver_record(job, drv)
        return None

    def on_job_list(self, conn: Any, body: Any, bufs: list) -> list:
        linked = {rec.get("job_id") for rec in self.table.values()}
        drivers = [self._driver_record(job, drv) for job, drv in self.drivers.items() if job_hex(job) not in linked]
        return self.table.values() + drivers

    def on_job_stop(self, conn: Any, sid: str, bufs: list) -> bool:
        rec = self._submitted(sid)
        if rec["status"] in TERMINAL:
            return False
        rec["stop_requested"] = True
        self.table.set(sid, rec)
        if sid not in self.procs:  # not started yet: it never will
            starting = self._starting.get(sid)
            if starting is not None:
                starting.cancel()
            self._finish(sid, None)
            return True
        self._signal(sid, signal.SIGTERM)
        self.kill_at[sid] = time.monotonic() + STOP_GRACE_S
        return True

    def on_job_delete(self, conn: Any, sid: str, bufs: list) -> bool:
        rec = self._submitted(sid)
        if rec["status"] not in TERMINAL:
            raise ValueError(f"Attempted to delete job {sid!r} in non-terminal state {rec['status']}; stop it first")
        self.table.delete(sid)
        for path in (rec["log_path"], rec["log_path"] + ".exit"):
            try:
                os.unlink(path)
            except OSError:
                pass
        return True

    def on_job_logs(self, conn: Any, body: dict, bufs: list) -> dict:
        rec = self._submitted(body["submission_id"])
        status, offset = rec["status"], body["offset"]
        try:
            with open(rec["log_path"], "rb") as f:
                f.seek(offset)
                data = f.read(max(body["max_bytes"], 1))
        except FileNotFoundError:
            data = b""
        return {"data": data, "offset": offset + len(data), "status": status}

    def _logs_dir(self) -> str | None:
        from skate._private import logs

        if os.environ.get(logs.ENV):
            return os.environ[logs.ENV]
        return logs.session_logs_dir(self.session_dir) if self.session_dir else None

    def _submitted(self, sid: str) -> dict:
        rec = self.table.get(sid)
        if rec is None:
            raise ValueError(f"Job {sid} does not exist")
        return rec

    def _driver_record(self, job: int, drv: dict) -> dict:
        return {"type": "DRIVER", "job_id": job_hex(job), "submission_id": None, "entrypoint": "",
                "status": "RUNNING" if drv.get("alive") else "SUCCEEDED", "message": None, "error_type": None,
                "start_time": int(drv.get("start", 0) * 1000), "driver_pid": drv.get("driver_pid"),
                "end_time": int(drv["end"] * 1000) if drv.get("end") else None,
                "driver_namespace": drv.get("namespace")}

    # --- drivers ------------------------------------------------------------------------------
    def driver_started(self, job: int, driver_pid: int) -> None:
        """Links a new driver to the running submission whose entrypoint started it."""
        running = {rec["driver_pid"]: sid for sid, rec in self.table.items()
                   if rec["status"] == "RUNNING" and rec.get("driver_pid")}
        if not running:
            return
        import psutil

        try:
            family = [driver_pid] + [p.pid for p in psutil.Process(driver_pid).parents()]
        except psutil.Error:
            return
        for pid in family:
            sid = running.get(pid)
            if sid is not None:
                rec = self.table.get(sid)
                rec["job_id"] = job_hex(job)
                self.table.set(sid, rec)
                return

    # --- processes ------------------------------------------------------------------------------
    async def _start(self, sid: str) -> None:
        rec = self.table.get(sid)
        try:
            lease = await self._reserve(rec)
        except asyncio.CancelledError:
            return  # stopped while it waited for its resources
        except Exception as e:  # noqa: BLE001 - the job fails with the reason
            self._fail_pending(sid, "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", f"Job's entrypoint cannot be scheduled: {e}")
            return
        if lease is not None:
            self.leases[sid] = lease
        try:
            cwd = await self._working_dir(rec)
            env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
            env.update(SKATE_ADDRESS=self.address, SKATE_CLUSTER_TOKEN=self.token.decode(),
                       SKATE_JOB_SUBMISSION_ID=sid)
            env.update((rec.get("runtime_env") or {}).get("env_vars") or {})
            fd = os.open(rec["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _RUNNER, rec["entrypoint"], rec["log_path"] + ".exit"],
                    stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=cwd, env=env, start_new_session=True,
                )
            finally:
                os.close(fd)
        except asyncio.CancelledError:
            self._release(sid)
            return
        except Exception as e:  # noqa: BLE001 - the job fails with the reason
            self._release(sid)
            self._fail_pending(sid, "RUNTIME_ENV_SETUP_FAILURE",
                               f"Job's runtime environment could not be set up: {type(e).__name__}: {e}")
            return
        rec = self.table.get(sid)
        if rec is None or rec["status"] != "PENDING":  # stopped (or deleted) while it was set up
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._release(sid)
            return
        self.procs[sid] = proc
        head = self.head_node()
        import psutil

        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        rec.update(status="RUNNING", message="Job is currently running.", driver_pid=proc.pid, created=created,
                   driver_node_id=head["node_id"].hex() if head else None, driver_ip=head["ip"] if head else None)
        self.table.set(sid, rec)

    def _fail_pending(self, sid: str, error_type: str, message: str) -> None:
        rec = self.table.get(sid)
        if rec is not None and rec["status"] == "PENDING":
            rec.update(status="FAILED", error_type=error_type, end_time=_now_ms(), message=message)
            self.table.set(sid, rec)

    async def _reserve(self, rec: dict) -> Any:
        """Holds the entrypoint's resources on the head node while the job runs; None when it asks for none.

        A lease on the head's node daemon, pinned there, held by a connection
        of this control store: closing it gives the resources back.  The job
        stays PENDING until the head has them free.

        Raises:
            RuntimeError: the head is gone, or can never have that much.
        """
        shape = entrypoint_shape(rec)
        if not shape:
            return None
        head = self.head_node()
        if head is None:
            raise RuntimeError("the head node is not alive")
        from skate._private import hostaddr, wire

        conn = await wire.connect(hostaddr.local_target(head["uds"], head["ip"], head["port"]), self.token, {},
                                  expect=head["node_id"])
        try:
            reply = await conn.request("request_lease", {
                "resources": shape, "strategy": ["node", head["node_id"].hex(), False], "no_spill": True})
        except BaseException:
            conn.close()
            raise
        if "lease_id" not in reply:
            conn.close()
            raise RuntimeError(reply.get("unschedulable") or f"the head node did not grant {shape}")
        return conn

    def _release(self, sid: str) -> None:
        conn = self.leases.pop(sid, None)
        if conn is not None:
            conn.close()

    async def _working_dir(self, rec: dict) -> str | None:
        from skate._private import runtime_env_packaging

        uri = (rec.get("runtime_env") or {}).get("working_dir")
        if uri is None:
            return None
        data = self.kv.get((runtime_env_packaging.KV_NAMESPACE, uri))
        if data is None:
            raise FileNotFoundError(f"the package {uri} is not in the control store (upload it first)")
        root = os.path.join(self.session_dir or self._logs_dir() or ".", "runtime_resources", "working_dir_files")
        return await asyncio.get_running_loop().run_in_executor(
            None, runtime_env_packaging.unpack, uri, data, root)

    def _adopt(self, sid: str, rec: dict) -> None:
        """After a restart: keeps watching a job whose entrypoint still runs, or ends it."""
        import psutil

        try:
            p = psutil.Process(rec["driver_pid"]) if rec.get("driver_pid") else None
            if p is not None and rec.get("created") and abs(p.create_time() - rec["created"]) > 0.01:
                p = None
        except psutil.Error:
            p = None
        if p is not None:
            self.procs[sid] = p
        elif rec["status"] == "PENDING":
            rec.update(status="FAILED", error_type="JOB_SUPERVISOR_ACTOR_DIED", end_time=_now_ms(),
                       message="the control store restarted before the job's entrypoint started")
            self.table.set(sid, rec)
        else:
            self._finish(sid, self._exit_code(rec))

    @staticmethod
    def _exit_code(rec: dict) -> int | None:
        try:
            with open(rec["log_path"] + ".exit") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _signal(self, sid: str, sig: int) -> None:
        proc = self.procs.get(sid)
        if proc is not None:
            try:
                os.killpg(proc.pid, sig)
            except OSError:
                pass

    def _finish(self, sid: str, code: int | None) -> None:
        self.procs.pop(sid, None)
        self.kill_at.pop(sid, None)
        self._release(sid)
        rec = self.table.get(sid)
        if rec is None:
            return
        rec.update(end_time=_now_ms(), driver_exit_code=code)
        if rec.get("stop_requested"):
            rec.update(status="STOPPED", message="Job was intentionally stopped.")
        elif code == 0:
            rec.update(status="SUCCEEDED", message="Job finished successfully.")
        else:
            from skate._private import logs

            tail = logs.tail(rec["log_path"], 10_000)[-_LOG_TAIL_CHARS:]
            what = f"failed with exit code {code}" if code is not None else "ended with an unknown exit code"
            rec.update(status="FAILED", error_type="JOB_ENTRYPOINT_COMMAND_ERROR",
                       message=f"Job entrypoint command {what}, last available logs (truncated to 20,000 chars):\n{tail}")
        self.table.set(sid, rec)

    async def watch(self) -> None:
        """Notices entrypoints that ended and kills those past their stop grace; trims old records (runs forever)."""
        last_trim = time.monotonic()
        while True:
            await asyncio.sleep(0.05 if self.procs else 0.5)
            self.poll()
            if time.monotonic() - last_trim > 5:
                last_trim = time.monotonic()
                self.table.trim(lambda r: r["status"] in TERMINAL, CONFIG.max_finished_jobs, "end_time")

    def poll(self) -> None:
        """One round of ``watch``."""
        if not self.procs:
            return
        import psutil

        now = time.monotonic()
        for sid, proc in list(self.procs.items()):
            if isinstance(proc, subprocess.Popen):
                code = proc.poll()
                done = code is not None
            else:
                done = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
                code = self._exit_code(self.table.get(sid) or {"log_path": ""}) if done else None
            if done:
                self._finish(sid, code)
            elif self.kill_at.get(sid, now + 1) <= now:
                self._signal(sid, signal.SIGKILL)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stops every running entrypoint (the control store is going away), waiting up to ``grace_s``."""
        for sid in list(self.procs):
            rec = self.table.get(sid)
            if rec is not None:
                rec["stop_requested"] = True
                self.table.set(sid, rec)
            self._signal(sid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.procs and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.02)
        for sid in list(self.procs):
            self._signal(sid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.procs and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.02)
