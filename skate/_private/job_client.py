"""``skate.job_submission``: submit, watch and stop jobs on a running cluster (follows Ray's API).

A client talks to the head's control store over skate's authenticated
connection (the cluster token, like every other process of the cluster);
its job manager (``gcs/job_manager``) runs the entrypoints.  A local
``working_dir`` is zipped here and uploaded to the control store's KV table
first (``runtime_env_packaging``), once per distinct content.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from skate._private import discovery, runtime, runtime_env_packaging, wire

_HTTP_ONLY = ("cookies", "headers")
_CHUNK = 4 << 20


class JobStatus(str, enum.Enum):
    """A submitted job's state (follows Ray's ``JobStatus``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return f"{self.value}"

    def is_terminal(self) -> bool:
        """True for STOPPED, SUCCEEDED and FAILED: the status will not change again."""
        return self.value in {"STOPPED", "SUCCEEDED", "FAILED"}


class JobType(str, enum.Enum):
    """SUBMISSION: submitted with ``submit_job``; DRIVER: a driver that called ``init()`` itself."""

    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclasses.dataclass
class DriverInfo:
    """The driver of a job: its job id (hex), host address and pid (follows Ray's)."""

    id: str
    node_ip_address: str
    pid: str


@dataclasses.dataclass
class JobInfo:
    """A submitted job's status and settings (follows Ray's ``JobInfo``; times in ms since the epoch)."""

    status: JobStatus
    entrypoint: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    entrypoint_num_cpus: int | float | None = None
    entrypoint_num_gpus: int | float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_json(cls, json_dict: dict[str, Any]) -> JobInfo:
        """The inverse of ``to_json``."""
        return cls(**dict(json_dict, status=JobStatus(json_dict["status"])))


@dataclasses.dataclass
class JobDetails:
    """A job with its driver and submission (follows Ray's ``JobDetails``; times in ms since the epoch)."""

    type: JobType
    status: JobStatus
    entrypoint: str
    job_id: str | None = None
    submission_id: str | None = None
    driver_info: DriverInfo | None = None
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None

    def dict(self) -> dict[str, Any]:  # noqa: A003 - the name Ray's model has
        """The fields as plain values (enums as their names)."""
        d = dataclasses.asdict(self)
        d["type"], d["status"] = self.type.value, self.status.value
        return d

    def json(self) -> str:
        """``dict()`` as JSON text."""
        return json.dumps(self.dict())


def _details(rec: dict) -> JobDetails:
    driver = None
    if rec.get("job_id") and rec.get("driver_pid"):
        driver = DriverInfo(id=rec["job_id"], node_ip_address=rec.get("driver_ip") or "", pid=str(rec["driver_pid"]))
    return JobDetails(
        type=JobType(rec.get("type", "SUBMISSION")), status=JobStatus(rec["status"]), entrypoint=rec.get("entrypoint", ""),
        job_id=rec.get("job_id"), submission_id=rec.get("submission_id"), driver_info=driver,
        message=rec.get("message"), error_type=rec.get("error_type"), start_time=rec.get("start_time"),
        end_time=rec.get("end_time"), metadata=rec.get("metadata") or {}, runtime_env=rec.get("runtime_env") or {},
        driver_node_id=rec.get("driver_node_id"), driver_exit_code=rec.get("driver_exit_code"),
    )


def _run(coro: Coroutine) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: not on its loop
        return pool.submit(asyncio.run, coro).result()


class JobSubmissionClient:
    """Submits jobs to a cluster and follows them (follows Ray's ``JobSubmissionClient``).

    Args:
        address: the head's ``HOST:PORT`` (what ``skate start --head``
            prints); None: the cluster this process is connected to, else
            the latest cluster started on this machine (``"auto"``: the
            latter).  ``SKATE_ADDRESS``/``RAY_ADDRESS``, when set, override
            it (like Ray's client).  The token comes
            from ``SKATE_CLUSTER_TOKEN`` or this machine's cluster record.
        create_cluster_if_needed: only False: skate never starts a cluster here.
        metadata: added to every submitted job's metadata.
        cookies, headers, verify: HTTP settings; skate's job API is not HTTP,
            so only their defaults are accepted.

    Raises:
        ConnectionError: no cluster found, unreachable, or the token was refused.
        ValueError: a malformed address, or an HTTP setting.
    """

    def __init__(self, address: str | None = None, create_cluster_if_needed: bool = False,
                 cookies: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                 headers: dict[str, Any] | None = None, verify: str | bool | None = True) -> None:
        if create_cluster_if_needed:
            raise ValueError("create_cluster_if_needed=True: skate's job client never starts a cluster; "
                             "start one with `skate start --head`")
        for name, value in (("cookies", cookies), ("headers", headers)):
            if value:
                raise ValueError(f"{name}: skate's job API is not HTTP (it uses the cluster token); leave it out")
        if verify is not True:
            raise ValueError("verify: skate's job API is not HTTP (its connections are encrypted and authenticated "
                             "with the cluster token); leave it out")
        if address and address.startswith(("http://", "https://")):
            raise ValueError(
                f"address {address!r}: skate's job API is served by the head's control store; pass its HOST:PORT "
                "(printed by `skate start --head`), or nothing to use the cluster started on this machine")
        address = discovery.env_address() or address  # the environment wins, as in Ray
        core = runtime.current_or_none()
        if address is None and core is not None:
            self._address, self._token = core.gcs_address, core.token  # this driver's own cluster
        else:
            gcs_address = discovery.resolve_address(address or "auto")
            if gcs_address is None:
                raise ConnectionError(discovery.NOT_FOUND)
            self._address = gcs_address
            self._token = discovery.credentials(gcs_address).token
        self._default_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._request("ping")

    def get_address(self) -> str:
        """The head's ``HOST:PORT`` this client talks to."""
        return self._address

    # --- transport ---------------------------------------------------------------------------
    async def _connect(self) -> wire.Connection:
        try:
            return await asyncio.wait_for(
                wire.connect(self._address, self._token, {}, expect=wire.GCS_IDENTITY), 10.0)
        except wire.AuthError:
            raise ConnectionError(f"the cluster at {self._address} rejected this process's token; "
                                  "check SKATE_CLUSTER_TOKEN") from None
        except (OSError, EOFError, asyncio.TimeoutError) as e:
            raise ConnectionError(f"cannot reach a skate cluster at {self._address}: {e or type(e).__name__}") from None

    @staticmethod
    async def _ask(conn: wire.Connection, method: str, body: Any = None, bufs: Any = ()) -> Any:
        try:
            return await conn.request(method, body, bufs)
        except wire.RemoteError as e:
            raise RuntimeError(str(e).split(": ", 1)[-1]) from None
        except wire.ConnectionLost:
            raise ConnectionError("the cluster's control store went away") from None

    async def _session(self, calls: list[tuple[str, Any, Any]]) -> list:
        conn = await self._connect()
        try:
            return [await self._ask(conn, m, b, bufs) for m, b, bufs in calls]
        finally:
            conn.close()

    def _request(self, method: str, body: Any = None) -> Any:
        return _run(self._session([(method, body, ())]))[0]

    # --- jobs ---------------------------------------------------------------------------------
    def submit_job(self, *, entrypoint: str, job_id: str | None = None, runtime_env: dict[str, Any] | None = None,
                   metadata: dict[str, str] | None = None, submission_id: str | None = None,
                   entrypoint_num_cpus: int | float | None = None, entrypoint_num_gpus: int | float | None = None,
                   entrypoint_memory: int | None = None, entrypoint_resources: dict[str, float] | None = None) -> str:
        """Submits a job: ``entrypoint`` runs as a shell command on the head; returns its submission id.

        ``runtime_env`` may set ``env_vars`` and ``working_dir`` (a local
        folder or .zip, uploaded; ``excludes`` leaves files out).  ``job_id``
        is the deprecated name of ``submission_id``.

        Raises:
            ValueError: both ``job_id`` and ``submission_id``, or a runtime_env
                field or entrypoint resource skate cannot honour.
            RuntimeError: the cluster refused the job (e.g. a duplicate submission id).
        """
        if job_id is not None and submission_id is not None:
            raise ValueError("give job_id or submission_id, not both (job_id is its deprecated name)")
        submission_id = submission_id if submission_id is not None else job_id
        from skate._private.gcs.job_manager import check_entrypoint_resources, check_runtime_env

        runtime_env = dict(check_runtime_env(runtime_env))
        calls: list[tuple[str, Any, Any]] = []
        wd = runtime_env.get("working_dir")
        if wd is not None and not runtime_env_packaging.is_package_uri(wd):
            if not isinstance(wd, str):
                raise ValueError(f"runtime_env 'working_dir' must be a path, not {wd!r}")
            if "://" in wd:
                raise ValueError(f"runtime_env 'working_dir' {wd!r}: skate takes a local folder or .zip file only")
            uri, data = runtime_env_packaging.package(wd, runtime_env.get("excludes"))
            calls.append(("kv_put", [runtime_env_packaging.KV_NAMESPACE, uri, False], [data]))
            runtime_env["working_dir"] = uri
        runtime_env.pop("excludes", None)
        body = {
            "submission_id": submission_id, "entrypoint": entrypoint, "runtime_env": runtime_env or None,
            "metadata": {**self._default_metadata, **{str(k): str(v) for k, v in (metadata or {}).items()}},
            "entrypoint_num_cpus": entrypoint_num_cpus, "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory, "entrypoint_resources": entrypoint_resources,
        }
        check_entrypoint_resources(body)
        calls.append(("job_submit", body, ()))
        return _run(self._session(calls))[-1]["submission_id"]

    def _record(self, job_id: str) -> dict:
        rec = self._request("job_get", job_id)
        if rec is None:
            raise RuntimeError(f"Job {job_id} does not exist")
        return rec

    def get_job_info(self, job_id: str) -> JobDetails:
        """A job by submission id (or its driver's job id).

        Raises:
            RuntimeError: no such job.
        """
        return _details(self._record(job_id))

    def get_job_status(self, job_id: str) -> JobStatus:
        """A job's status.

        Raises:
            RuntimeError: no such job.
        """
        return JobStatus(self._record(job_id)["status"])

    def list_jobs(self) -> list[JobDetails]:
        """Every submitted job, and every driver that connected by itself."""
        return [_details(r) for r in self._request("job_list")]

    def stop_job(self, job_id: str) -> bool:
        """Stops a job (SIGTERM to its entrypoint's processes, SIGKILL after a grace period).

        Returns:
            True if it was running (it ends STOPPED), False if it had ended already.

        Raises:
            RuntimeError: no such job.
        """
        return bool(self._request("job_stop", self._submission_id(job_id)))

    def delete_job(self, job_id: str) -> bool:
        """Deletes an ended job's record and log.

        Raises:
            RuntimeError: no such job, or it has not ended yet.
        """
        return bool(self._request("job_delete", self._submission_id(job_id)))

    def _submission_id(self, job_id: str) -> str:
        rec = self._record(job_id)
        if rec.get("type") == "DRIVER":
            raise RuntimeError(f"Job {job_id} was not submitted (it is a driver that called init() itself)")
        return rec["submission_id"]

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job's entrypoint printed so far (stdout and stderr).

        Raises:
            RuntimeError: no such job.
        """
        sid = self._submission_id(job_id)

        async def read() -> bytes:
            conn = await self._connect()
            out, offset = [], 0
            try:
                while True:
                    r = await self._ask(conn, "job_logs", {"submission_id": sid, "offset": offset, "max_bytes": _CHUNK})
                    if not r["data"]:
                        return b"".join(out)
                    out.append(r["data"])
                    offset = r["offset"]
            finally:
                conn.close()

        return _run(read()).decode(errors="replace")

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it comes, until the job has ended (an async iterator of text chunks).

        Raises:
            RuntimeError: no such job.
        """
        sid = self._submission_id(job_id)
        conn = await self._connect()
        offset = 0
        try:
            while True:
                r = await self._ask(conn, "job_logs", {"submission_id": sid, "offset": offset, "max_bytes": _CHUNK})
                if r["data"]:
                    offset = r["offset"]
                    yield r["data"].decode(errors="replace")
                elif JobStatus(r["status"]).is_terminal():
                    return
                else:
                    await asyncio.sleep(0.05)
        finally:
            conn.close()
