"""Compile-time decisions of compiled graphs, on node objects alone (no processes)."""

from __future__ import annotations

import pytest

from skate._private.cgraph.plan import DRIVER, Dep
from skate._private.ids import ActorID
from skate.dag import ClassMethodNode, InputNode, MultiOutputNode
from skate.dag.graph_plan import INPUT, analyze, plan_edges, plan_ops


class FakeHandle:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ray_actor_id = ActorID(name.encode().ljust(16, b"\0"))

    def __repr__(self) -> str:
        return f"Actor({self.name})"


def call(handle, method, *args, **kwargs):
    return ClassMethodNode(method, args, kwargs, {"num_returns": 1}, {"parent_class_node": handle})


def test_pipeline_edges_and_ops():
    a, b = FakeHandle("a"), FakeHandle("b")
    with InputNode() as inp:
        dag = call(b, "g", call(a, "f", inp))
    shape = analyze(dag)
    assert shape.actors == [a, b] and shape.owner == [0, 1] and shape.outputs == [1]
    assert shape.consumers == {INPUT: [0], 0: [1], 1: [DRIVER]}
    nodes = {0: "n1", 1: "n1", DRIVER: "n1"}
    edges = plan_edges(shape, nodes, lambda e: f"seg{e}", 1024, 4)
    assert [(e.writer, e.readers, e.shm) for e in edges.values()] == [(DRIVER, [0], "seg0"), (0, [1], "seg1"), (1, [DRIVER], "seg2")]
    ops = plan_ops(shape, edges)
    assert [(o.method, o.args, o.deps, o.out_edge, o.simple) for o in ops[0]] == [("f", (Dep(0),), [(("edge", 0), None)], 1, True)]
    assert [(o.method, o.out_edge) for o in ops[1]] == [("g", 2)]


def test_same_actor_values_stay_local_and_other_nodes_get_no_segment():
    a, b = FakeHandle("a"), FakeHandle("b")
    with InputNode() as inp:
        x = call(a, "f", inp[0], key=inp.k)
        dag = MultiOutputNode([call(a, "g", [x, 1]), call(b, "h", x)])
    shape = analyze(dag)
    assert shape.keep_local == {0}
    edges = plan_edges(shape, {0: "n1", 1: "n2", DRIVER: "n1"}, lambda e: f"seg{e}", 1024, 4)
    x_edge = edges[0]
    assert x_edge.readers == [1] and x_edge.local == [False] and x_edge.shm is None  # b is on another node
    ops = plan_ops(shape, edges)
    f, g = ops[0]
    assert f.deps == [(("edge", edges[INPUT].edge_id), (0, "__getitem__")), (("edge", edges[INPUT].edge_id), ("k", "__getattr__"))]
    assert f.args == (Dep(0),) and f.kwargs == {"key": Dep(1)} and not f.simple
    assert f.keep_local and f.out_edge == x_edge.edge_id
    assert g.deps == [(("local", 0), None)] and g.args == ([Dep(0), 1],)


def test_errors():
    a = FakeHandle("a")
    with InputNode() as i1, InputNode() as i2:
        two = call(a, "f", i1, i2)
    with pytest.raises(ValueError, match="exactly one InputNode"):
        analyze(two)
    with InputNode() as inp:
        call(a, "f", inp)
        lonely = call(a, "g", 1)
    with pytest.raises(ValueError, match="exactly one InputNode"):
        analyze(lonely)
    with InputNode() as inp:
        nested = MultiOutputNode([call(a, "f", MultiOutputNode([inp]))])
    with pytest.raises(ValueError, match="MultiOutputNode can only be the output"):
        analyze(nested)
    with InputNode() as inp:
        opts = ClassMethodNode("f", (inp,), {}, {"num_returns": 2}, {"parent_class_node": a})
    with pytest.raises(NotImplementedError, match="num_returns"):
        analyze(opts)
    with InputNode() as inp:
        first = call(a, "f", inp)
        no_input = MultiOutputNode([first, call(a, "g")])
    with pytest.raises(ValueError, match="at least one other DAGNode as an input"):
        analyze(no_input)
