"""What the driver tells each actor of a compiled graph: its tasks and its channels.

Plain picklable records; ``skate.dag.compiled_dag_node`` builds them from a
DAG and ``skate._private.cgraph.worker`` runs them inside the actors.
Processes are numbered: ``0..n-1`` the graph's actors, ``DRIVER`` (-1) the
driver.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, NamedTuple

DRIVER = -1
HELLO = struct.Struct("<16siI")  # graph token, reader process, edge id


class Dep(NamedTuple):
    """Stands, in an op's argument template, for the op's ``i``-th input."""

    i: int


@dataclasses.dataclass
class EdgePlan:
    """One node's value, carried from its writer process to each reader process."""

    edge_id: int
    writer: int
    readers: list[int]
    #: Per reader: on the writer's node, so it maps ``shm``.
    local: list[bool]
    #: Name of the shared-memory segment under /dev/shm, or None.
    shm: str | None
    slot_size: int
    nslots: int
    #: Where torch tensors go (``with_tensor_transport``), or None.
    tensor_device: str | None = None
    #: ``"nccl"``: tensors go by send/recv in the graph's process group.
    transport: str = "auto"


@dataclasses.dataclass
class OpPlan:
    """One actor method call per execution."""

    node: int
    method: str
    #: Argument templates: ``Dep(i)`` is replaced by the i-th input value.
    args: tuple
    kwargs: dict
    #: Per input: (``"edge"``, edge id) or (``"local"``, node), and an
    #: accessor ``(key, "__getitem__" | "__getattr__")`` or None.
    deps: list
    #: Edge the result goes out on (None: read only by later ops of this actor).
    out_edge: int | None
    keep_local: bool
    #: The arguments are exactly the inputs, in order (the fast path).
    simple: bool


@dataclasses.dataclass
class ActorPlan:
    """Everything one actor needs to join a compiled graph."""

    gid: bytes
    token: bytes
    index: int
    ops: list[OpPlan]
    edges: dict[int, EdgePlan]
    #: Process index -> listen addresses and node, from ``prepare``.
    addresses: dict[int, dict]
    #: Process index -> a name for error messages.
    names: dict[int, str]
    connect_timeout: float
    #: This actor's place in the graph's process group (``transport="nccl"``):
    #: host, port, prefix, rank, world, backend, timeout, and ``ranks``
    #: (actor index -> rank); None when it has no such edge.
    p2p: dict | None = None


def fill(template: Any, values: list) -> Any:
    """``template`` with each ``Dep(i)`` replaced by ``values[i]`` (in lists, tuples, dicts)."""
    if type(template) is Dep:
        return values[template.i]
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, tuple):
        items = [fill(v, values) for v in template]
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template
