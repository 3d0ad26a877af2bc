"""The state API's logs: list a node's log files and print one (follows Ray's ``list_logs``/``get_log``).

Each node daemon serves its own log folder (``raylet/log_files``), so logs
of nodes on other hosts are read over the cluster's authenticated
connections.  A worker's output is ``worker-<pid>.out`` / ``.err`` on its
node; an actor's or a task's is that of the worker that ran it; a submitted
job's is ``job-driver-<submission id>.log`` on the head.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from skate._private import discovery, hostaddr, runtime, wire
from skate._private.state_api import gcs_request

#: Categories of log files by name, like Ray's (the first match wins).
_CATEGORIES = (
    ("gcs_server", "gcs-"), ("raylet", "raylet-"), ("zygote", "zygote-"), ("driver", "job-driver-"),
)


def _category(name: str) -> str:
    if name.startswith("worker-"):
        return "worker_err" if name.endswith(".err") else "worker_out"
    for cat, prefix in _CATEGORIES:
        if name.startswith(prefix):
            return cat
    return "internal"


def _token(address: str | None) -> bytes:
    core = runtime.current_or_none()
    if core is not None and address is None:
        return core.token
    gcs_address = discovery.resolve_address(address)
    if gcs_address is None:
        raise ConnectionError(discovery.NOT_FOUND)
    return discovery.credentials(gcs_address).token


def _node(address: str | None, node_id: str | None, node_ip: str | None) -> dict:
    nodes = [n for n in gcs_request("get_nodes", None, address) if n.get("alive")]
    for n in nodes:
        if node_id is not None and n["node_id"].hex() != node_id:
            continue
        if node_ip is not None and n["ip"] != node_ip:
            continue
        if node_id is None and node_ip is None and not n.get("is_head"):
            continue
        return n
    what = f"node {node_id}" if node_id else f"a node at {node_ip}" if node_ip else "a head node"
    raise ValueError(f"no live {what} in the cluster (see `skate list nodes`)")


def _ask(address: str | None, node: dict, method: str, body: Any, timeout: float) -> Any:
    target = hostaddr.local_target(node["uds"], node["ip"], node["port"])
    try:
        return discovery.request(target, _token(address), method, body, timeout=timeout, expect=node["node_id"])
    except wire.RemoteError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None


def list_logs(address: str | None = None, node_id: str | None = None, node_ip: str | None = None,
              glob_filter: str | None = None, timeout: int = 30) -> dict[str, list[str]]:
    """A node's log files by category (gcs_server, raylet, zygote, driver, worker_out, worker_err, internal).

    Follows Ray's ``list_logs``; the node defaults to the head.

    Raises:
        ValueError: no such live node.
    """
    node = _node(address, node_id, node_ip)
    out: dict[str, list[str]] = {}
    for f in _ask(address, node, "log_list", glob_filter or "*", timeout):
        out.setdefault(_category(f["name"]), []).append(f["name"])
    return out


def _resolve(address: str | None, filename: str | None, actor_id: str | None, task_id: str | None,
             pid: int | None, submission_id: str | None, suffix: str, node_id: str | None) -> tuple[str | None, str]:
    """``(node_id, filename)`` of the log to read."""
    if submission_id is not None:
        rec = gcs_request("job_get", submission_id, address)
        if rec is None or rec.get("type") == "DRIVER":
            raise ValueError(f"no submitted job {submission_id!r}")
        return rec.get("driver_node_id"), f"job-driver-{rec['submission_id']}.log"
    if actor_id is not None:
        found = [a for a in gcs_request("list_actors", None, address) if a["actor_id"].hex() == actor_id]
        if not found or not found[0].get("pid") or not found[0].get("node_id"):
            raise ValueError(f"no actor {actor_id!r} with a worker process (see `skate list actors`)")
        return found[0]["node_id"].hex(), f"worker-{found[0]['pid']}.{suffix}"
    if task_id is not None:
        found = gcs_request("list_task_events", {"filters": [["task_id", "=", task_id]]}, address)
        if not found:
            raise ValueError(f"no task {task_id!r} (see `skate list tasks`)")
        return found[-1]["node_id"].hex(), f"worker-{found[-1]['pid']}.{suffix}"
    if pid is not None:
        return node_id, f"worker-{pid}.{suffix}"
    if filename is None:
        raise ValueError("name a log: filename, actor_id, task_id, pid or submission_id")
    return node_id, filename


def get_log(address: str | None = None, node_id: str | None = None, node_ip: str | None = None,
            filename: str | None = None, actor_id: str | None = None, task_id: str | None = None,
            pid: int | None = None, follow: bool = False, tail: int = -1, timeout: int = 30,
            suffix: str = "out", encoding: str = "utf-8", errors: str = "strict",
            submission_id: str | None = None, attempt_number: int = 0, _interval: float | None = None,
            filter_ansi_code: bool = False) -> Iterator[str]:
    """The lines of one log, as text chunks (follows Ray's ``get_log``).

    Names the log by ``filename`` (on ``node_id``/``node_ip``, default the
    head), or by the ``actor_id``, ``task_id`` or worker ``pid`` whose
    ``worker-<pid>.<suffix>`` it is (``suffix``: ``out`` or ``err``), or by
    a job's ``submission_id``.  ``tail``: the last lines only (-1: all);
    ``follow``: keep yielding what is appended, until the caller stops.
    A task's log is that of the worker that ran it (all of it).

    Raises:
        ValueError: no such log, node, actor, task or job; a suffix other than out/err.
    """
    if suffix not in ("out", "err"):
        raise ValueError(f"suffix must be 'out' or 'err', not {suffix!r}")
    if attempt_number:
        raise ValueError("attempt_number: skate keeps one log per worker, not per task attempt; leave it out")
    if filter_ansi_code:
        raise ValueError("filter_ansi_code: skate does not rewrite log text; leave it out")
    where, name = _resolve(address, filename, actor_id, task_id, pid, submission_id, suffix, node_id)
    node = _node(address, where, node_ip if where is None else None)
    reply = _ask(address, node, "log_read", {"name": name, "tail_lines": tail, "max_bytes": 4 << 20}, timeout)
    yield from _chunks(reply, encoding, errors)
    offset = reply["offset"]
    while reply["data"] and reply["offset"] < reply["size"]:
        reply = _ask(address, node, "log_read", {"name": name, "offset": offset, "max_bytes": 4 << 20}, timeout)
        yield from _chunks(reply, encoding, errors)
        offset = reply["offset"]
    while follow:
        time.sleep(_interval or 0.2)
        reply = _ask(address, node, "log_read", {"name": name, "offset": offset, "max_bytes": 4 << 20}, timeout)
        yield from _chunks(reply, encoding, errors)
        offset = reply["offset"]


def _chunks(reply: dict, encoding: str, errors: str) -> Iterator[str]:
    if reply["data"]:
        yield reply["data"].decode(encoding, errors)


__all__ = ["get_log", "list_logs"]
