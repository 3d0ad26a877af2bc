"""The state API's workers and objects, and every process's stack (``skate stack``).

::

    control store: nodes, drivers (with their core worker addresses)
    node daemons:  list_workers  --> WorkerState
    core workers:  list_refs     --> ObjectState (each process's owned objects and borrowed refs)
                   dump_stack    --> its threads' stacks

Every request is a new connection authenticated with the cluster token, made
in parallel, so a process that died in between is skipped, not waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from typing import Any

from skate._private import discovery, hostaddr, runtime, wire
from skate._private.state_api import DEFAULT_LIMIT, StateRecord, apply_filters, gcs_request, job_hex


@dataclasses.dataclass
class WorkerState(StateRecord):
    """A worker or driver process (follows Ray's ``WorkerState``)."""

    worker_id: str
    is_alive: bool
    worker_type: str  # WORKER or DRIVER
    node_id: str | None
    ip: str
    pid: int
    exit_type: str | None = None
    exit_detail: str | None = None
    actor_id: str | None = None
    job_id: str | None = None
    leased: bool = False


@dataclasses.dataclass
class ObjectState(StateRecord):
    """One process's reference to an object (follows Ray's ``ObjectState``; sizes in bytes)."""

    object_id: str
    object_size: int
    task_status: str  # PENDING (its task has not finished), FINISHED or FAILED
    reference_type: str  # LOCAL_REFERENCE, PINNED_IN_MEMORY, USED_BY_PENDING_TASK or CAPTURED_IN_OBJECT
    call_site: str
    type: str  # WORKER or DRIVER
    pid: int
    ip: str
    attempt_number: int = 0
    owned: bool = True
    node_id: str | None = None


def _token(address: str | None) -> tuple[str | None, bytes]:
    core = runtime.current_or_none()
    if core is not None and address is None:
        return core.gcs_address, core.token
    gcs_address = discovery.resolve_address(address)
    if gcs_address is None:
        raise ConnectionError(discovery.NOT_FOUND)
    return gcs_address, discovery.credentials(gcs_address).token


async def _ask_all(token: bytes, asks: list[tuple[Any, bytes, str]], timeout: float) -> list:
    async def one(target: Any, expect: bytes, method: str) -> Any:
        conn = await asyncio.wait_for(wire.connect(target, token, {}, expect=expect), timeout)
        try:
            return await asyncio.wait_for(conn.request(method), timeout)
        finally:
            conn.close()

    return await asyncio.gather(*(one(*a) for a in asks), return_exceptions=True)


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _core_target(addr: list) -> Any:
    return hostaddr.local_target(addr[3] if len(addr) > 3 else None, addr[1], addr[2])


def _processes(address: str | None, timeout: float) -> tuple[bytes, list[WorkerState], list[list | None]]:
    """Every worker (asked of each live node) and live driver; with their core worker addresses."""
    nodes = gcs_request("get_nodes", None, address)
    jobs = gcs_request("list_jobs", None, address)
    _, token = _token(address)
    live = [n for n in nodes if n.get("alive")]
    asks = [(hostaddr.local_target(n["uds"], n["ip"], n["port"]), n["node_id"], "list_workers") for n in live]
    replies = _run(_ask_all(token, asks, timeout))
    states: list[WorkerState] = []
    addrs: list[list | None] = []
    for n, reply in zip(live, replies, strict=True):
        if isinstance(reply, BaseException):
            continue
        for w in reply:
            states.append(WorkerState(
                worker_id=w["worker_id"].hex(), is_alive=bool(w.get("alive")), worker_type="WORKER",
                node_id=n["node_id"].hex(), ip=n["ip"], pid=w["pid"], leased=bool(w.get("leased")),
                actor_id=w["actor_id"].hex() if w.get("actor_id") else None,
            ))
            addrs.append(w.get("address"))
    for job, j in ((j["job_id"], j) for j in jobs):
        addr = j.get("address")
        states.append(WorkerState(
            worker_id=addr[0].hex() if addr else "", is_alive=bool(j.get("alive")), worker_type="DRIVER",
            node_id=None, ip=addr[1] if addr else "", pid=j.get("driver_pid", 0), job_id=job_hex(job),
            exit_type=None if j.get("alive") else "INTENDED_USER_EXIT",
        ))
        addrs.append(addr if j.get("alive") else None)
    return token, states, addrs


def list_workers(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[WorkerState]:
    """The cluster's worker processes and drivers (follows Ray's ``list_workers``).

    Raises:
        RuntimeError / ConnectionError: not connected and no cluster found.
    """
    return apply_filters(_processes(address, timeout)[1], filters, limit)


def get_worker(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> WorkerState | None:
    """One worker by its id (hex), or None (follows Ray's ``get_worker``)."""
    found = apply_filters(_processes(address, timeout)[1], [("worker_id", "=", id)], None)
    return found[0] if found else None


def _ref_type(r: dict) -> str:
    if r.get("pending_task"):
        return "USED_BY_PENDING_TASK"
    if r.get("local"):
        return "LOCAL_REFERENCE"
    if r.get("state") == "SHM":
        return "PINNED_IN_MEMORY"
    return "CAPTURED_IN_OBJECT"


def _objects(address: str | None, timeout: float) -> list[ObjectState]:
    token, procs, addrs = _processes(address, timeout)
    asks, who = [], []
    for p, addr in zip(procs, addrs, strict=True):
        if addr and p.is_alive:
            asks.append((_core_target(addr), addr[0], "list_refs"))
            who.append(p)
    out = []
    for p, reply in zip(who, _run(_ask_all(token, asks, timeout)), strict=True):
        if isinstance(reply, BaseException):
            continue
        for r in reply:
            state = r.get("state")
            out.append(ObjectState(
                object_id=r["object_id"].hex(), object_size=int(r.get("size") or 0),
                task_status="PENDING" if state == "PENDING" else "FAILED" if state == "ERROR" else "FINISHED",
                reference_type=_ref_type(r), call_site="disabled", type=p.worker_type, pid=p.pid, ip=p.ip,
                owned=bool(r.get("owned")), node_id=p.node_id,
            ))
    return out


def list_objects(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[ObjectState]:
    """Every process's references to objects: one record per (process, object) (follows Ray's ``list_objects``).

    Sizes are known for the objects a process owns; borrowed refs show 0.
    """
    return apply_filters(_objects(address, timeout), filters, limit)


def get_objects(id: str, address: str | None = None, timeout: int = 30, _explain: bool = False) -> list[ObjectState]:
    """Every process's references to one object (hex id) (follows Ray's ``get_objects``)."""
    return apply_filters(_objects(address, timeout), [("object_id", "=", id)], None)


def summarize_objects(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                      _explain: bool = False) -> dict:
    """Object counts and sizes (follows the shape of Ray's ``summarize_objects``, by call site: "disabled")."""
    objs = _objects(address, timeout)
    size = sum(o.object_size for o in objs if o.owned)
    entry = {
        "total_objects": len({o.object_id for o in objs}), "total_size_mb": size / 2**20,
        "total_num_workers": len({(o.ip, o.pid) for o in objs}), "total_num_nodes": len({o.node_id for o in objs}),
        "task_state_counts": dict(Counter(o.task_status for o in objs)),
        "ref_type_counts": dict(Counter(o.reference_type for o in objs)),
    }
    summary = {"disabled": entry} if objs else {}
    return {"cluster": {"summary": summary, "total_objects": entry["total_objects"], "total_size_mb": size / 2**20,
                        "callsite_enabled": False, "summary_by": "callsite"}}


def stacks(address: str | None = None, node_id: str | None = None, timeout: float = 10) -> list[tuple[WorkerState, str]]:
    """Each live worker's and driver's Python stacks, as ``(process, text)``.

    ``node_id``: that node's workers only; default: the processes on this
    machine.  A process that cannot answer gets its error as text.
    """
    token, procs, addrs = _processes(address, timeout)
    asks, who = [], []
    for p, addr in zip(procs, addrs, strict=True):
        if not addr or not p.is_alive:
            continue
        if node_id is not None:
            if p.node_id != node_id:
                continue
        elif not (hostaddr.is_local(p.ip) and _runs_here(p.pid)):
            continue
        asks.append((_core_target(addr), addr[0], "dump_stack"))
        who.append(p)
    replies = _run(_ask_all(token, asks, timeout))
    return [(p, r if isinstance(r, str) else f"(no answer: {r!r})") for p, r in zip(who, replies, strict=True)]


def _runs_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False
