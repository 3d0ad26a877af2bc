"""From a DAG to what each process of a compiled graph does: pure decisions, no I/O.

``analyze`` checks the graph and finds its actors, their method calls in
order and who reads whose value; ``plan_edges`` turns that into channels
(given which node each process is on) and ``plan_ops`` into each actor's
op list.  ``CompiledDAG`` does the talking to processes around them.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from skate._private.cgraph.plan import DRIVER, Dep, EdgePlan, OpPlan
from skate.dag.scan import replace_nodes

INPUT = "input"  # the producer key of the graph's input (method producers are indices)


@dataclasses.dataclass
class GraphShape:
    """What ``analyze`` found in a DAG."""

    #: Actor method nodes, producers before consumers.
    methods: list
    #: Per method node: the index of its actor in ``actors``.
    owner: list[int]
    #: The actor handles, in order of first use.
    actors: list
    #: Per output of the graph: the index of its method node.
    outputs: list[int]
    #: Per method node: its inputs, ``(node, source, accessor)``; source is
    #: ``INPUT``, a method index (another actor), or ``("local", index)``.
    deps: list[list]
    #: Producer key -> the processes that read its value, in order.
    consumers: dict
    #: Method indices whose value a later op of the same actor reads.
    keep_local: set
    #: Where the input's tensors go (``with_tensor_transport``), or None.
    input_device: str | None
    multi: bool
    #: Actors that send or receive tensors point to point (``transport="nccl"``), in order.
    p2p_actors: list = dataclasses.field(default_factory=list)


def topo_order(root: Any) -> list:
    """The nodes reachable from ``root``, each after the nodes it reads."""
    order: list = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for c in reversed(node._get_all_child_nodes()):
            if id(c) not in seen:
                stack.append((c, False))
    return order


def transport_of(node: Any) -> str:
    """The node's tensor transport (``"auto"`` without a hint)."""
    hint = node._type_hint
    return hint.transport if hint is not None else "auto"


def device_of(node: Any) -> str | None:
    """Where a node's tensors go (its ``with_tensor_transport`` hint), or None."""
    hint = node._type_hint
    return hint.device if hint is not None else None


def analyze(root: Any) -> GraphShape:
    """Checks that ``root`` can be compiled and describes it.

    Raises:
        ValueError: for graphs compiled graphs cannot run (no or several
            InputNodes, a nested MultiOutputNode, tasks with no input, ...).
        NotImplementedError: for what they do not run yet (tasks, ClassNodes,
            method options).
    """
    order = topo_order(root)
    multi = root._cg_kind == "multi"
    if sum(1 for n in order if n._cg_kind == "input") != 1:
        raise ValueError("Compiled DAGs currently require exactly one InputNode")
    outputs = list(root.get_args()) if multi else [root]
    for n in order:
        kind = n._cg_kind
        if kind == "function":
            raise NotImplementedError("Compiled DAGs currently only support actor method nodes")
        if kind == "class":
            raise NotImplementedError(
                "Compiled DAGs take methods of existing actors: create the actor with .remote() and bind "
                "its methods (handle.method.bind(...)) instead of binding the class"
            )
        if kind == "multi" and n is not root:
            raise ValueError("A MultiOutputNode can only be the output (root) of a compiled DAG")
        if kind == "method":
            extra = {k: v for k, v in n.get_options().items() if not (k == "num_returns" and v == 1)}
            if extra:
                raise NotImplementedError(f"Compiled DAGs do not support the method options {sorted(extra)} yet")
    for o in outputs:
        if o._cg_kind != "method":
            raise ValueError(
                "The output of a compiled DAG must be actor method nodes (or a MultiOutputNode of them), "
                f"not {type(o).__name__}"
            )
    if multi and root._type_hint is not None:
        raise ValueError("with_tensor_transport() applies to the nodes of a MultiOutputNode, not to the MultiOutputNode")
    hinted = {device_of(n) for n in order if n._cg_kind in ("input", "input_attr")} - {None}
    if len(hinted) > 1:
        raise ValueError(f"The graph's input was given tensor transports to different devices: {sorted(hinted)}")
    methods = [n for n in order if n._cg_kind == "method"]
    node_ix = {id(n): i for i, n in enumerate(methods)}
    actors: list = []
    actor_ix: dict[bytes, int] = {}
    owner: list[int] = []
    for m in methods:
        h = m._get_actor_handle()
        if h is None:
            raise NotImplementedError("Compiled DAGs take methods of existing actor handles, not of a ClassNode")
        aid = h._ray_actor_id.binary()
        if aid not in actor_ix:
            actor_ix[aid] = len(actors)
            actors.append(h)
        owner.append(actor_ix[aid])
    consumers: dict[Any, list[int]] = collections.defaultdict(list)
    keep_local: set[int] = set()
    all_deps: list[list] = []
    for m, a in zip(methods, owner, strict=True):
        deps: list = []
        for c in m._get_all_child_nodes():
            if c._cg_kind in ("input", "input_attr"):
                acc = None if c._cg_kind == "input" else (c._key, c._accessor_method)
                deps.append((c, INPUT, acc))
                key: Any = INPUT
            elif c._cg_kind == "method":
                p = node_ix[id(c)]
                if owner[p] == a:
                    keep_local.add(p)
                    deps.append((c, ("local", p), None))
                    continue
                deps.append((c, p, None))
                key = p
            else:
                raise ValueError(f"Found unsupported node of type {type(c)}")
            if a not in consumers[key]:
                consumers[key].append(a)
        if not deps:
            raise ValueError(
                "Compiled DAGs require each task to take a ray.dag.InputNode or at least one other DAGNode as an input"
            )
        all_deps.append(deps)
    out_ix = [node_ix[id(o)] for o in outputs]
    for p in out_ix:
        if DRIVER not in consumers[p]:
            consumers[p].append(DRIVER)
    for n in order:
        if n._cg_kind in ("input", "input_attr") and transport_of(n) == "nccl":
            raise ValueError("transport='nccl' moves tensors between actors; the driver's input cannot use it")
    p2p: set[int] = set()
    for p, m in enumerate(methods):
        if transport_of(m) != "nccl":
            continue
        readers = consumers.get(p, [])
        if DRIVER in readers:
            raise ValueError(
                f"the output of {m.get_method_name()} goes to the driver, which cannot receive tensors with "
                "transport='nccl'; only actors can"
            )
        if readers:
            p2p.add(owner[p])
            p2p.update(readers)
    return GraphShape(methods, owner, actors, out_ix, all_deps, dict(consumers), keep_local,
                      hinted.pop() if hinted else None, multi, sorted(p2p))


def plan_edges(shape: GraphShape, node_of: dict[int, Any], segment: Callable[[int], str],
               slot_size: int, nslots: int) -> dict[Any, EdgePlan]:
    """One channel per value read by other processes, keyed like ``shape.consumers``.

    Args:
        node_of: Process (actor index, or ``DRIVER``) -> its node id.
        segment: Edge id -> a shared-memory segment name, used when a
            reader is on the writer's node.
    """
    edges: dict[Any, EdgePlan] = {}
    for key, readers in shape.consumers.items():
        writer = DRIVER if key == INPUT else shape.owner[key]
        local = [node_of[r] == node_of[writer] for r in readers]
        eid = len(edges)
        device = shape.input_device if key == INPUT else device_of(shape.methods[key])
        name = segment(eid) if any(local) else None
        transport = "auto" if key == INPUT else transport_of(shape.methods[key])
        edges[key] = EdgePlan(eid, writer, list(readers), local, name, slot_size, nslots, device, transport)
    return edges


def plan_ops(shape: GraphShape, edges: dict[Any, EdgePlan]) -> dict[int, list[OpPlan]]:
    """Each actor's method calls, in order, with their argument templates and channels."""
    ops: dict[int, list[OpPlan]] = {a: [] for a in range(len(shape.actors))}
    for p, (m, deps) in enumerate(zip(shape.methods, shape.deps, strict=True)):
        table, plan_deps = {}, []
        for i, (c, src, acc) in enumerate(deps):
            table[id(c)] = Dep(i)
            if isinstance(src, tuple):
                plan_deps.append((src, acc))
            else:
                plan_deps.append((("edge", edges[src].edge_id), acc))
        args = tuple(replace_nodes(list(m.get_args()), table))
        kwargs = replace_nodes(m.get_kwargs(), table)
        simple = not kwargs and args == tuple(Dep(i) for i in range(len(deps)))
        out = edges[p].edge_id if p in edges else None
        ops[shape.owner[p]].append(OpPlan(p, m.get_method_name(), args, kwargs, plan_deps, out, p in shape.keep_local, simple))
    return ops
