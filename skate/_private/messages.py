"""Every message skate's processes send each other, declared once.

A frame's body is decoded with the type declared here for its method (a
``TypedDict``, a tuple or a plain type) by ``msgspec``, which validates it on
the way in: a field that is missing or of the wrong type is a
``ProtocolError`` answered to the sender ("bad 'obj_seal' message: ..."),
never a ``KeyError`` deep inside a daemon.  Handlers still see plain dicts
and lists, so a decoded message costs no more than an untyped one.

``REQUESTS`` maps each method to ``(request body, reply body)``; one-way
notifications have ``None`` as their reply type.  Short keys (``"t"``,
``"nr"``) are kept for messages on the task path, where they are encoded
millions of times; each is documented where it is declared.

Who serves what::

    control store  register_node heartbeat get_nodes drain_node subscribe publish new_job gcs_info gcs_stats
                   register_actor schedule_actor update_actor get_actor get_named_actor list_actors
                   list_named_actors kv_put kv_get kv_del kv_keys ping task_events
                   list_task_events list_jobs report_waits list_waits; job_* (``job_messages``)
                   (node daemon: list_workers log_list log_read; core worker: list_refs
                   dump_stack: ``state_messages``); placement groups (``messages_pg``)
    node daemon    request_lease cancel_lease_request return_lease lease_blocked lease_unblocked worker_exit_info
                   kill_worker register_worker register_client node_stats obj_reserve
                   obj_seal obj_get obj_get_many obj_unmapped obj_fetch obj_write obj_read obj_free flush_logs
                   pub shutdown (from the control store)
    core worker    push_task create_actor actor_call actor_ready cancel_task release_held exit_now hello
                   gen_item gen_ack
                   borrow_add borrow_remove get_object reconstruct_object pub warning ping
"""

from __future__ import annotations

from typing import Any, TypedDict, Union

import msgspec

from skate._private.job_messages import JOB_REQUESTS
from skate._private.messages_pg import PG_REQUESTS
from skate._private.state_messages import STATE_REQUESTS

Number = Union[int, float]
Resources = dict[str, Number]
#: A core worker's address: ``[worker id, ip, port, unix socket path]``, plus
#: ``[exec port, exec unix socket path]`` for workers (their execution endpoint).
Address = list[Any]


# --- nodes (control store) ---------------------------------------------------------
class NodeInfo(TypedDict):
    """A node daemon introducing itself (``register_node``)."""

    node_id: bytes
    ip: str
    port: int  # the node daemon's TCP port
    uds: str  # its Unix socket path
    resources: Resources
    store_prefix: str  # shared-memory name prefix of its object store
    pid: int
    session_dir: str
    is_head: bool
    labels: dict[str, str]  # ``skate start --labels``


class NodeRecord(NodeInfo, total=False):
    """A node as the control store reports it."""

    alive: bool
    available: Resources
    version: int  # of the last resource report applied to ``available``
    death_reason: str


class RegisterNodeReply(TypedDict):
    nodes: list[NodeRecord]  # every node known so far, this one included


class _HeartbeatRequired(TypedDict):
    node_id: bytes


class Heartbeat(_HeartbeatRequired, total=False):
    """A node daemon's liveness heartbeat; with the free resources that changed, when some did.

    ``version`` counts the node's reports (a newer one wins); ``full``: the
    whole ``available`` map rather than the changed keys only.  The control
    store broadcasts changes in batches on the ``resources`` channel:
    ``[[node_id, version, changed], ...]``.
    """

    version: int
    available: Resources
    full: bool


# --- jobs and actors (control store) -------------------------------------------------
class _NewJobRequired(TypedDict):
    driver_pid: int
    namespace: Union[str, None]


class NewJob(_NewJobRequired, total=False):
    job_id: int  # a driver reattaching to its job after a control-store restart
    address: Address  # the driver's core worker (``skate memory``/``stack`` ask it)


class GcsInfo(TypedDict):
    durable: bool  # the tables outlive the control store (clients wait for its restart)


class GcsStats(TypedDict):
    received: int  # requests and notifications the control store handled since it started
    published: int  # pub/sub messages it sent to subscribers since it started


class RegisterActor(TypedDict):
    """An actor about to be created (its pickled handle metadata travels as a buffer)."""

    actor_id: bytes
    name: Union[str, None]
    namespace: Union[str, None]
    class_name: str
    detached: bool
    owner: Address
    job_id: int
    max_restarts: int


class ScheduleActor(TypedDict):
    """A registered actor handed to the control store to create (buffers: the
    pickled class, then the constructor's argument buffers)."""

    actor_id: bytes
    spec: Any  # the creation's TaskSpec (see below), arguments resolved
    lease: Any  # the LeaseRequest for its worker
    via: Union[bytes, None]  # the node whose daemon is asked first (the owner's)


class ScheduleActorReply(TypedDict, total=False):
    """The first incarnation is up (``actor``: its record), or why not (error buffers
    follow when the constructor raised)."""

    ok: bool
    actor: Any
    cause: str
    kind: str  # why it failed, when the owner raises a specific error: "unschedulable" or "env_error"


class _ActorUpdateRequired(TypedDict):
    actor_id: bytes


class ActorUpdate(_ActorUpdateRequired, total=False):
    """A change of an actor's record; only ``actor_id`` is required."""

    state: str  # PENDING_CREATION, ALIVE, RESTARTING or DEAD
    cause: Union[str, None]  # why it died
    cause_if_unset: str  # the cause, unless one is known already (a worker's exit seen by its node)
    address: Address
    node_id: bytes
    worker_id: bytes  # with cause_if_unset: the worker that exited (ignored if the actor moved on)
    pid: Union[int, None]
    num_restarts: int  # the incarnation: 0 first, +1 per restart
    kill: bool  # (with DEAD) end its process too, even while its constructor runs


class ActorRecord(RegisterActor, total=False):
    """An actor as the control store reports it."""

    num_restarts: int
    state: str
    cause: Union[str, None]
    address: Address
    node_id: bytes
    worker_id: bytes
    pid: Union[int, None]


class _GetActorRequired(TypedDict):
    actor_id: bytes


class GetActor(_GetActorRequired, total=False):
    wait: bool  # answer once it is ALIVE (with num_restarts >= min_restarts) or DEAD
    min_restarts: int  # with wait: the incarnation to wait for (default 0)
    timeout: float  # with wait: answer with the current record after this many seconds (default 30)
    until_dead: bool  # answer once it is DEAD (at most 5 s)


class GetNamedActor(TypedDict):
    name: str
    namespace: Union[str, None]


class ListNamedActors(TypedDict, total=False):
    namespace: Union[str, None]
    all_namespaces: bool


class NamedActor(TypedDict):
    name: str
    namespace: Union[str, None]


# --- leases (node daemon) ---------------------------------------------------------------
class _LeaseRequestRequired(TypedDict):
    resources: Resources


class LeaseRequest(_LeaseRequestRequired, total=False):
    """A request for a worker that fits ``resources``."""

    placement: Resources  # what the node must have free to take it (default: resources)
    strategy: Any  # None, "SPREAD", "BALANCE" (actors: nodes with room take turns), or ["node", node_id hex, soft]
    actor_id: Union[bytes, None]  # set when the worker is for an actor
    detached: bool
    no_spill: bool  # grant here or wait: do not point elsewhere
    runtime_env: dict[str, Any]  # resolved runtime_env (package URIs): workers are started with it
    job: int  # the submitter's job: a worker serves one job
    rq: int  # the requester's number for this request (``cancel_lease_request`` names it)


class Spillback(TypedDict):
    node_id: bytes
    ip: str
    port: int
    uds: str


class LeaseReply(TypedDict, total=False):
    """A grant, or where to ask instead (``spill``), or why it never can be."""

    lease_id: int
    worker_id: bytes
    address: Address
    node_id: bytes
    pid: int
    spill: Spillback
    unschedulable: str
    env_error: str  # the runtime_env could not be set up on the node


class LeaseRef(TypedDict):
    lease_id: int


class _ReturnLeaseRequired(TypedDict):
    lease_id: int


class ReturnLease(_ReturnLeaseRequired, total=False):
    kill: bool  # the worker must not be reused


class _WorkerExitInfoRequestRequired(TypedDict):
    worker_id: bytes


class WorkerExitInfoRequest(_WorkerExitInfoRequestRequired, total=False):
    timeout: float  # seconds to wait for the exit


class WorkerExitInfo(TypedDict):
    how: str  # "exited with code 1", "was killed by signal 9 (SIGKILL)", ...
    code: Union[int, None]
    tail: list[str]  # last lines of its output


class _KillWorkerRequired(TypedDict):
    worker_id: bytes


class KillWorker(_KillWorkerRequired, total=False):
    force: bool


class RegisterWorker(TypedDict):
    worker_id: bytes
    address: Address


class RegisterClient(TypedDict):
    worker_id: bytes


class ClientInfo(TypedDict):
    """What a node daemon tells the processes that connect to it."""

    node_id: bytes
    ip: str
    store_prefix: str
    gcs_address: str
    resources: Resources


class NodeStats(TypedDict):
    store: dict[str, Any]
    workers: int
    idle: int
    leases: int
    leases_granted: int  # since the node daemon started
    available: Resources
    pids: list[int]
    demands: list[Any]  # queued lease requests: [[resources, infeasible], ...]
    owners: int  # processes whose objects this node stores
    host: dict[str, Any]  # cpu_percent, cpu_count, mem_total, mem_used (bytes) of the node's host


# --- objects (node daemon) ---------------------------------------------------------------
class _ObjReserveRequired(TypedDict):
    oid: bytes
    size: int  # bytes


class ObjReserve(_ObjReserveRequired, total=False):
    primary: bool  # False for a copy pulled from another node
    owner: Address  # the owning core worker: its objects are freed when it dies


class ObjRef(TypedDict):
    oid: bytes


class ObjGet(TypedDict):
    oid: bytes
    node_id: Union[bytes, None]  # where the primary copy is, to pull it from


class ObjGetMany(TypedDict):
    """``obj_get`` for many objects in one round trip (one ``get`` of many refs)."""

    oids: list[bytes]
    node_ids: list[Union[bytes, None]]  # per oid: where its primary copy is


class _ObjFetchRequired(TypedDict):
    oid: bytes
    node_id: bytes  # the node that asks (told about frees later)


class ObjFetch(_ObjFetchRequired, total=False):
    """A chunk of an object for another node; the reply is its total size (False: not here)."""

    offset: int  # bytes
    length: int  # bytes (at most the server's chunk size)


# --- tasks and actor calls (core worker) --------------------------------------------------
class _TaskSpecRequired(TypedDict):
    t: bytes  # task id


class TaskSpec(_TaskSpecRequired, total=False):
    """A task pushed to a leased worker, or an actor creation or call.

    ``a`` describes the pickled arguments: ``["i", n]`` (n buffers inline),
    ``["s", oid, node_id]`` (in shared memory) or None; ``r`` describes the
    values of ObjectRef arguments, one entry each, in the same forms plus
    ``["o", oid, owner address]`` (ask the owner).
    """

    n: str  # name (function, Class or Class.method)
    f: bytes  # function id
    fb: int  # 1: the pickled function is the first buffer
    nr: int  # num_returns
    mc: int  # max_calls (0: unlimited)
    mr: int  # max_retries
    j: int  # job id
    ns: Union[str, None]  # namespace
    a: Any  # arguments, see above
    r: list[Any]  # ObjectRef argument values, see above
    l: int  # noqa: E741 - lease id
    m: str  # actor method name
    aid: bytes  # actor id (creation)
    mcc: Union[int, None]  # max_concurrency (creation)
    detached: bool  # (creation)
    res: Resources  # resources assigned to it (omitted: {"CPU": 1.0})
    bp: int  # a generator task's backpressure: items sent ahead of the consumer
    an: str  # the actor's name (creation)
    cn: str  # the call's name, from .options(name=...)
    rs: int  # the restart this creation is (0: first creation)
    cgs: dict[str, int]  # concurrency groups: name -> max concurrency (creation)
    cg: str  # the concurrency group of an actor call (absent: the default group)
    pg: list[Any]  # [placement group id, bundle index, capture child tasks] when run in one
    gc: bool  # (creation) sent by the control store: the actor does not end with this connection
    ne: int  # 1: no task events for it (enable_task_events=False)
    ow: bytes  # (creation) the owner's worker id: the actor ends when the owner's connection to it closes


class TaskReply(TypedDict, total=False):
    """A task's or actor call's results.

    ``r`` has one entry per return: ``[INLINE, n buffers]``, ``[SHM, 0,
    node_id, size]`` or ``[ERROR, n buffers]``; ``h`` lists refs the worker
    holds for the caller until it borrowed them: ``[task id, [[oid, owner],
    ...]]``; ``x`` says the worker (or actor) exits after this reply.
    ``ok``/``pid`` answer an actor creation.
    """

    r: list[Any]
    h: list[Any]
    x: int
    ok: int
    pid: int
    ts: list[float]  # [start, end] of the task on the worker (seconds since the epoch)
    err: list[str]  # [exception type, message] when the task failed
    g: int  # a generator task ended: the number of items it sent
    dyn: int  # ... and it was num_returns="dynamic"


class _CancelTaskRequired(TypedDict):
    t: bytes


class _GenItemRequired(TypedDict):
    t: bytes  # task id
    i: int  # the item's index
    r: list[Any]  # its return meta, as in TaskReply.r


class GenItem(_GenItemRequired, total=False):
    """One item a generator task yielded, sent to its caller as it comes."""
    h: list[Any]  # refs it holds, held by the worker until released: as TaskReply.h (key: the item's object id)


class GenAck(TypedDict):
    """The caller took ``n`` items of generator task ``t`` (backpressure; 2**62: it dropped the generator)."""
    t: bytes
    n: int


class CancelTask(_CancelTaskRequired, total=False):
    force: bool
    r: bool  # recursive: also cancel the tasks it submitted (default True)


class ExitNow(TypedDict, total=False):
    graceful: bool
    cause: str  # (graceful) why, for the actor's record in the control store


class JobRecord(TypedDict, total=False):
    job_id: int
    driver_pid: int
    namespace: Union[str, None]
    start: float
    end: Union[float, None]
    alive: bool
    address: Address  # the driver's core worker


#: ``[state, node_id, size]`` of an object, or None when the owner freed it.
#: (A list, not a tuple: a reply with buffers reaches its waiter as a
#: ``(body, bufs)`` tuple, so a reply body is never a tuple itself.)
ObjectMeta = Union[list[Any], None]


#: method -> (request body type, reply body type; None for notifications)
REQUESTS: dict[str, tuple[Any, Any]] = {
    # control store
    "register_node": (NodeInfo, RegisterNodeReply),
    "heartbeat": (Heartbeat, None),
    "get_nodes": (None, list[NodeRecord]),
    "drain_node": (bytes, bool),
    "subscribe": (list[str], bool),
    "publish": (tuple[str, Any], Any),
    "new_job": (NewJob, int),
    "gcs_info": (None, GcsInfo),
    "gcs_stats": (None, GcsStats),
    "register_actor": (RegisterActor, bool),
    "schedule_actor": (ScheduleActor, ScheduleActorReply),
    "update_actor": (ActorUpdate, None),
    "get_actor": (GetActor, Union[ActorRecord, None]),
    "get_named_actor": (GetNamedActor, Union[ActorRecord, None]),
    "list_actors": (None, list[ActorRecord]),
    "list_named_actors": (ListNamedActors, list[NamedActor]),
    "kv_put": (tuple[Any, Any, bool], bool),
    "kv_get": (tuple[Any, Any], bool),
    "kv_del": (tuple[Any, Any], bool),
    "kv_keys": (tuple[Any, Any], list[Any]),
    "ping": (Any, str),
    "list_jobs": (None, list[JobRecord]),
    # node daemon
    "pub": (tuple[str, Any], None),
    "shutdown": (None, None),
    "request_lease": (LeaseRequest, LeaseReply),
    "return_lease": (ReturnLease, None),
    "cancel_lease_request": (list[int], None),  # the requester's ``rq`` numbers: no longer wanted
    "lease_blocked": (LeaseRef, None),
    "lease_unblocked": (LeaseRef, None),
    "worker_exit_info": (WorkerExitInfoRequest, Union[WorkerExitInfo, None]),
    "kill_worker": (KillWorker, bool),
    "register_worker": (RegisterWorker, ClientInfo),
    "register_client": (RegisterClient, ClientInfo),
    "node_stats": (None, NodeStats),
    "obj_reserve": (ObjReserve, str),
    "obj_seal": (ObjRef, None),
    "obj_get": (ObjGet, str),
    "obj_get_many": (ObjGetMany, list[Union[str, None]]),  # None: ask for that one with obj_get
    "obj_unmapped": (list[bytes], None),
    "obj_fetch": (ObjFetch, Union[bool, int]),
    "obj_write": (ObjRef, bool),  # payload: the object's layout (a driver with no node on its host)
    "obj_read": (ObjGet, bool),  # reply payload: the object's layout (same)
    "obj_free": (list[bytes], None),
    "flush_logs": (None, bool),
    "warning": (str, None),
    # core worker
    "push_task": (TaskSpec, TaskReply),
    "create_actor": (TaskSpec, TaskReply),
    "actor_call": (TaskSpec, TaskReply),
    "actor_ready": (TaskSpec, TaskReply),  # __ray_ready__ on the control endpoint (the system group)
    "cancel_task": (CancelTask, None),
    "gen_item": (GenItem, None),
    "gen_ack": (GenAck, None),
    "release_held": (bytes, None),
    "exit_now": (Union[ExitNow, None], None),
    "hello": (Address, None),
    "borrow_add": (list[bytes], bool),
    "borrow_remove": (list[bytes], None),
    "get_object": (tuple[bytes, bool], ObjectMeta),
    **PG_REQUESTS,  # placement groups (messages_pg)
    # [object id, node its copy was lost on] -> [state, node_id, size] (+ the value's
    # buffers unless in shared memory), or ["lost", error class name, message]
    "reconstruct_object": (tuple[bytes, Union[bytes, None]], list[Any]),
}

REQUESTS.update(JOB_REQUESTS)
REQUESTS.update(STATE_REQUESTS)

_UNTYPED = msgspec.msgpack.Decoder()


class _Decoders(dict):
    """Method -> its decoder, built on first use (a process uses a few dozen of
    the methods; building every decoder at import cost each process about a
    megabyte and ten milliseconds)."""

    def __init__(self, reply: bool) -> None:
        super().__init__()
        self.reply = reply

    def __missing__(self, method: str) -> msgspec.msgpack.Decoder:
        declared = REQUESTS.get(method)
        kind = None if declared is None else declared[1 if self.reply else 0]
        # (A request declared with no body type decodes untyped, as a reply with none does.)
        decoder = _UNTYPED if declared is None or (self.reply and kind is None) else msgspec.msgpack.Decoder(kind)
        self[method] = decoder
        return decoder


_REQUEST_DECODERS = _Decoders(reply=False)
_REPLY_DECODERS = _Decoders(reply=True)


class UndeclaredFields(ValueError):
    """A message carries fields its declared type lacks (strict mode)."""


def check_declared(typed: Any, raw: Any, what: str) -> None:
    """Raises ``UndeclaredFields`` when ``raw`` has fields ``typed`` (its typed decoding) dropped."""
    extra = undeclared(typed, UNTYPED.decode(raw))
    if extra:
        raise UndeclaredFields(f"{what} carries fields its declared type lacks: {', '.join(extra)}")


def undeclared(typed: Any, untyped: Any) -> list[str]:
    """Paths of fields in ``untyped`` (a message decoded without its type)
    that decoding with its type dropped: fields nobody declared."""
    out: list[str] = []
    _undeclared(typed, untyped, "$", out)
    return out


def _undeclared(typed: Any, untyped: Any, path: str, out: list[str]) -> None:
    if isinstance(typed, dict) and isinstance(untyped, dict):
        for k, v in untyped.items():
            if k not in typed:
                out.append(f"{path}.{k}")
            else:
                _undeclared(typed[k], v, f"{path}.{k}", out)
    elif isinstance(typed, (list, tuple)) and isinstance(untyped, (list, tuple)):
        for i, (a, b) in enumerate(zip(typed, untyped, strict=False)):
            _undeclared(a, b, f"{path}[{i}]", out)


def request_decoder(method: str) -> msgspec.msgpack.Decoder:
    """The decoder that validates the body of a ``method`` request or notification.

    Methods not declared here (tests' own) decode untyped.
    """
    return _REQUEST_DECODERS[method]


def reply_decoder(method: str) -> msgspec.msgpack.Decoder:
    """The decoder that validates the reply to a ``method`` request."""
    return _REPLY_DECODERS[method]


UNTYPED = _UNTYPED
