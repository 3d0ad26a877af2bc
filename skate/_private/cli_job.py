"""``skate job``: submit, follow, stop, list and delete jobs (Ray's ``ray job`` verbs and flags).

Thin: each subcommand calls ``skate.job_submission.JobSubmissionClient``.
``submit`` waits for the job and streams its output unless ``--no-wait``,
and exits 1 when the job FAILED (like Ray's).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

_ADDRESS = click.option(
    "--address", default=None,
    help="HOST:PORT of the head [default: $SKATE_ADDRESS/$RAY_ADDRESS, else the latest cluster started here].")


def _client(address: str | None) -> Any:
    from skate.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _load_runtime_env(path: str | None, text: str | None, working_dir: str | None) -> dict | None:
    if path and text:
        raise click.UsageError("give --runtime-env or --runtime-env-json, not both")
    env: Any = None
    if text:
        try:
            env = json.loads(text)
        except ValueError as e:
            raise click.UsageError(f"--runtime-env-json is not JSON: {e}") from None
    elif path:
        with open(path) as f:
            raw = f.read()
        try:
            import yaml

            env = yaml.safe_load(raw)
        except ImportError:
            try:
                env = json.loads(raw)
            except ValueError:
                raise click.UsageError(f"--runtime-env {path}: reading YAML needs PyYAML (pip install pyyaml); "
                                       "or write the file as JSON") from None
    if env is not None and not isinstance(env, dict):
        raise click.UsageError("a runtime_env must be a mapping")
    if working_dir is not None:
        env = dict(env or {}, working_dir=working_dir)
    return env


def _tail(client: Any, sid: str) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            click.echo(chunk, nl=False)
            sys.stdout.flush()

    asyncio.run(tail())


def _report_end(client: Any, sid: str) -> int:
    info = client.get_job_info(sid)
    status = info.status.value
    if status == "SUCCEEDED":
        click.echo(f"Job '{sid}' succeeded")
    elif status == "STOPPED":
        click.echo(f"Job '{sid}' was stopped")
    else:
        click.echo(f"Job '{sid}' failed", err=True)
        if info.message:
            click.echo(info.message.splitlines()[0], err=True)
    return 1 if status == "FAILED" else 0


@click.group()
def job() -> None:
    """Submits and manages jobs: entrypoint commands the head runs (like `ray job`)."""


@job.command(context_settings={"ignore_unknown_options": True})
@_ADDRESS
@click.option("--job-id", default=None, help="Deprecated name of --submission-id.")
@click.option("--submission-id", default=None, help="The job's id [default: a new skatesubmit_... id].")
@click.option("--runtime-env", "runtime_env_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A YAML (or JSON) file holding the runtime_env (env_vars, working_dir, excludes).")
@click.option("--runtime-env-json", default=None, help="The runtime_env as JSON.")
@click.option("--working-dir", default=None, help="A local folder (or .zip) uploaded and used as the entrypoint's cwd.")
@click.option("--metadata-json", default=None, help="Metadata as a JSON object of strings.")
@click.option("--entrypoint-num-cpus", type=float, default=None,
              help="CPUs the entrypoint holds on the head node while it runs (the job waits for them).")
@click.option("--entrypoint-num-gpus", type=float, default=None, help="GPUs the entrypoint holds on the head node.")
@click.option("--entrypoint-memory", type=int, default=None, help="Bytes of `memory` the entrypoint holds on the head node.")
@click.option("--entrypoint-resources", default=None, help='Custom resources the entrypoint holds, as JSON, e.g. \'{"disk": 1}\'.')
@click.option("--no-wait", is_flag=True, help="Return once submitted instead of streaming the job's output to its end.")
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(address: str | None, job_id: str | None, submission_id: str | None, runtime_env_file: str | None,
           runtime_env_json: str | None, working_dir: str | None, metadata_json: str | None,
           entrypoint_num_cpus: float | None, entrypoint_num_gpus: float | None, entrypoint_memory: int | None,
           entrypoint_resources: str | None, no_wait: bool, entrypoint: tuple) -> None:
    """Submits ENTRYPOINT (after --) as a job; waits for it and prints its output unless --no-wait.

    Exits 1 if the job failed.
    """
    runtime_env = _load_runtime_env(runtime_env_file, runtime_env_json, working_dir)
    metadata = json.loads(metadata_json) if metadata_json else None
    resources = json.loads(entrypoint_resources) if entrypoint_resources else None
    client = _client(address)
    sid = client.submit_job(
        entrypoint=" ".join(entrypoint), job_id=job_id, submission_id=submission_id, runtime_env=runtime_env,
        metadata=metadata, entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
        entrypoint_memory=entrypoint_memory, entrypoint_resources=resources,
    )
    click.echo(f"Job '{sid}' submitted successfully")
    if no_wait:
        click.echo(f"  status: skate job status {sid}")
        click.echo(f"  logs:   skate job logs {sid} --follow")
        click.echo(f"  stop:   skate job stop {sid}")
        return
    click.echo(f"Tailing logs until the job exits (Ctrl-C stops following, not the job; skate job stop {sid} stops it):")
    _tail(client, sid)
    sys.exit(_report_end(client, sid))


@job.command()
@_ADDRESS
@click.argument("job_id")
def status(address: str | None, job_id: str) -> None:
    """Prints a job's status and status message."""
    info = _client(address).get_job_info(job_id)
    click.echo(f"Status for job '{job_id}': {info.status.value}")
    if info.message:
        click.echo(f"Status message: {info.message}")


@job.command()
@_ADDRESS
@click.option("-f", "--follow", is_flag=True, help="Keep printing the output until the job ends.")
@click.argument("job_id")
def logs(address: str | None, job_id: str, follow: bool) -> None:
    """Prints a job's output (stdout and stderr of its entrypoint)."""
    client = _client(address)
    if follow:
        _tail(client, job_id)
    else:
        click.echo(client.get_job_logs(job_id), nl=False)


@job.command()
@_ADDRESS
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the job to end.")
@click.argument("job_id")
def stop(address: str | None, job_id: str, no_wait: bool) -> None:
    """Stops a job: SIGTERM to its entrypoint's processes, SIGKILL after a grace period."""
    import time

    client = _client(address)
    if not client.stop_job(job_id):
        click.echo(f"Job '{job_id}' has already ended ({client.get_job_status(job_id).value})")
        return
    click.echo(f"Stopping job '{job_id}'")
    if no_wait:
        return
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(0.1)
    click.echo(f"Job '{job_id}' has ended: {client.get_job_status(job_id).value}")


@job.command("list")
@_ADDRESS
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
def list_(address: str | None, fmt: str) -> None:
    """Lists submitted jobs and drivers that connected by themselves."""
    from skate._private import cli_support as cs

    rows = []
    for j in _client(address).list_jobs():
        d = j.dict()
        rows.append({k: d[k] for k in ("submission_id", "job_id", "type", "status", "entrypoint", "start_time",
                                       "end_time", "message")} if fmt == "table" else d)
    for line in cs.format_records(rows, fmt):
        click.echo(line)


@job.command()
@_ADDRESS
@click.argument("job_id")
def delete(address: str | None, job_id: str) -> None:
    """Deletes an ended job's record and log."""
    _client(address).delete_job(job_id)
    click.echo(f"Job '{job_id}' deleted")
