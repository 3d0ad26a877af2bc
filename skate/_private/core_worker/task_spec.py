"""What a task is before it runs: its arguments encoded, its spec, its return refs.

Built in the submitting user thread (``encode_args``, ``new_task_spec``,
``make_returns``); ``resolve_deps`` runs on the I/O thread once the task's
top-level ref arguments are ready, for normal tasks and actor calls alike.
"""

from __future__ import annotations

from typing import Any

from skate._private import ids, serialization
from skate._private.config import CONFIG
from skate._private.core_worker.errors import as_error
from skate._private.core_worker.memory_store import INLINE, PENDING, SHM
from skate.object_ref import ObjectRef


class Arg:
    """Stands in for the i-th top-level ObjectRef argument inside the pickled args."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple:
        return (Arg, (self.i,))


class TaskRecord:
    """A submitted task until its results are in."""

    __slots__ = (
        "spec", "arg_bufs", "fn_id", "fn_bytes", "return_ids", "retries_left", "retry_exceptions",
        "keep", "deps", "key", "resources", "strategy", "cancelled", "lease", "name", "actor",
        "fut", "seq", "base_bufs", "renv", "func",
    )

    def __init__(self) -> None:
        self.base_bufs: Any = None  # arg_bufs before resolve_deps added to them (for a re-run)
        self.cancelled = False
        self.lease: Any = None
        self.actor: Any = None
        self.fut: Any = None
        self.seq = 0
        self.renv: Any = None  # the resolved runtime_env, None for the default one
        self.func = ""  # the function's qualified name (its task events' func_or_class_name)


def encode_args(core: Any, args: tuple, kwargs: dict, what: str | tuple[str, str]) -> tuple[Any, list, list, list]:
    """Pickles a task's arguments, pulling top-level ObjectRefs out (``what``: see ``serialization.dumps``).

    Returns ``(blob meta, blob bufs, top-level refs, refs to keep alive)``.
    """
    if not args and not kwargs:
        return None, [], [], []
    top: list = []
    pa = list(args)
    for i, a in enumerate(pa):
        if type(a) is ObjectRef:
            top.append(a)
            pa[i] = Arg(len(top) - 1)
    kw = kwargs
    if kwargs:
        kw = dict(kwargs)
        for k, v in kw.items():
            if type(v) is ObjectRef:
                top.append(v)
                kw[k] = Arg(len(top) - 1)
    try:
        data, bufs, nested = serialization.dumps((pa, kw), what)
    except serialization.SerializationError:
        # Name the argument that fails.
        what = serialization.what_text(what)
        for i, a in enumerate(args):
            serialization.dumps(a, f"argument {i} of {what}")
        for k, v in kwargs.items():
            serialization.dumps(v, f"keyword argument {k!r} of {what}")
        raise
    size = len(data) + sum(b.nbytes for b in bufs)
    keep = top + nested
    if size > CONFIG.max_inline_bytes:
        # Large arguments go to shared memory once, like a put.
        oid = core.new_put_id()
        core.store_value(oid, data, bufs, nested, ready=True)
        ref = ObjectRef(oid, core.address)
        keep.append(ref)
        return ["s", oid, core.node_id], [], top, keep
    return ["i", len(bufs) + 1], [data, *bufs], top, keep


def make_returns(core: Any, task_id: bytes, n: int, record: TaskRecord) -> list:
    """Registers the pending return objects of a task and returns their refs."""
    oids = [ids.object_id_for(task_id, i + 1) for i in range(n)]
    for oid in oids:
        core.store.create(oid).task = record
    record.return_ids = oids
    return [ObjectRef(oid, core.address) for oid in oids]


async def resolve_deps(core: Any, rec: TaskRecord) -> BaseException | None:
    """Waits for a task's top-level ref arguments and encodes them into its spec.

    Returns the upstream error if one of them failed.
    """
    entries = []
    extra: list = []
    if rec.base_bufs is None:
        rec.base_bufs = rec.arg_bufs
    else:
        rec.arg_bufs = rec.base_bufs  # resolved again (a re-run): start from the task's own
    for ref in rec.deps:
        oid = ref._id
        e = core.store.get(oid)
        if e is None:
            entries.append(["b", oid, ref._owner])
            continue
        if e.state == PENDING:
            await core.resolve(oid, ref._owner)
        if e.state == INLINE:
            entries.append(["i", len(e.bufs) + 1])
            extra.append(e.data)
            extra.extend(e.bufs)
        elif e.state == SHM:
            entries.append(["s", oid, e.node_id])
        else:
            e.retrieved = True
            return as_error(e.data, e.bufs)
    rec.spec["r"] = entries
    if extra:
        rec.arg_bufs = rec.arg_bufs + extra
    return None


def new_task_spec(core: Any, task_id: bytes, name: str, fn_id: bytes, num_returns: int, max_calls: int, max_retries: int) -> dict:
    """The message body that describes a task to a worker."""
    return {"t": task_id, "f": fn_id, "n": name, "nr": num_returns, "mc": max_calls, "mr": max_retries,
            "j": core.job_id, "ns": core.namespace, "r": []}
