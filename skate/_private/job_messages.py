"""The messages of submitted jobs (served by the control store's job manager).

Declared apart from ``messages`` to keep that module small; ``messages``
merges ``JOB_REQUESTS`` into its table, so strict decoding covers them too.

::

    job_submit  JobSubmit -> JobRecord      a new job (its entrypoint starts on the head)
    job_get     str -> JobRecord | None     by submission id or driver job id (hex)
    job_list    None -> [JobRecord]         every submitted job, then plain drivers
    job_stop    str -> bool                 True: it was running and is being stopped
    job_delete  str -> bool                 a finished job's record and log
    job_logs    JobLogs -> JobLogsReply     a chunk of the entrypoint's output
"""

from __future__ import annotations

from typing import Any, TypedDict, Union

Resources = dict[str, Union[int, float]]


class JobSubmit(TypedDict, total=False):
    """What ``JobSubmissionClient.submit_job`` asks for (follows Ray's fields)."""

    submission_id: Union[str, None]
    entrypoint: str
    runtime_env: Union[dict[str, Any], None]  # working_dir already a package URI
    metadata: Union[dict[str, str], None]
    entrypoint_num_cpus: Union[int, float, None]
    entrypoint_num_gpus: Union[int, float, None]
    entrypoint_memory: Union[int, None]  # bytes
    entrypoint_resources: Union[Resources, None]


class JobRecord(JobSubmit, total=False):
    """A job as the control store keeps and reports it."""

    type: str  # SUBMISSION, or DRIVER for a driver nobody submitted
    job_id: Union[str, None]  # the driver's job id (hex), once its entrypoint called init()
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED
    message: Union[str, None]
    error_type: Union[str, None]
    start_time: Union[int, None]  # ms since the epoch
    end_time: Union[int, None]
    driver_exit_code: Union[int, None]
    driver_node_id: Union[str, None]
    driver_pid: Union[int, None]  # the entrypoint's (shell's) pid on the head
    driver_ip: Union[str, None]
    driver_namespace: Union[str, None]
    stop_requested: bool
    log_path: str
    created: Union[float, None]  # the entrypoint process's start (psutil), to spot a reused pid


class JobLogs(TypedDict):
    submission_id: str
    offset: int  # bytes of the log already read
    max_bytes: int


class JobLogsReply(TypedDict):
    data: bytes
    offset: int  # where the next read starts
    status: str  # the job's status when read (tailing stops after a terminal one)


JOB_REQUESTS: dict[str, tuple[Any, Any]] = {
    "job_submit": (JobSubmit, JobRecord),
    "job_get": (str, Union[JobRecord, None]),
    "job_list": (None, list[JobRecord]),
    "job_stop": (str, bool),
    "job_delete": (str, bool),
    "job_logs": (JobLogs, JobLogsReply),
}
