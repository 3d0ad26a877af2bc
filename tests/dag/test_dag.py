"""Lazy DAGs without compilation: building, walking and ``execute()`` with real tasks and actors."""

from __future__ import annotations

import pytest

import skate
import skate.dag
from skate.dag import (
    ClassMethodNode,
    ClassNode,
    DAGInputData,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)
from skate.object_ref import ObjectRef


@skate.remote
def add(a, b):
    return a + b


@skate.remote
def total(items):
    # Nested nodes arrive as ObjectRefs, like nested refs passed to .remote().
    return sum(skate.get(x) if isinstance(x, ObjectRef) else x for x in items)


@skate.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def inc(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value


def test_ray_dag_is_reachable_from_the_top_level_module():
    import skate as ray

    assert ray.dag is skate.dag
    assert ray.dag.InputNode is InputNode


def test_function_nodes_chain_and_execute_returns_an_object_ref(ray_start):
    with InputNode() as inp:
        dag = add.bind(add.bind(inp, 1), 10)
    assert isinstance(dag, FunctionNode)
    ref = dag.execute(5)
    assert isinstance(ref, ObjectRef)
    assert skate.get(ref) == 16
    assert skate.get(dag.execute(0)) == 11  # a graph runs again with new input


def test_input_index_attribute_and_several_inputs(ray_start):
    with InputNode() as inp:
        a = inp[0]
        b = inp.x
        dag = add.bind(a, b)
    assert isinstance(a, InputAttributeNode) and isinstance(b, InputAttributeNode)
    assert inp[0] is a  # one node per key
    assert skate.get(dag.execute(1, x=2)) == 3
    with InputNode() as inp:
        dag = add.bind(inp[0], inp[1])
    assert skate.get(dag.execute(2, 3)) == 5
    assert skate.get(dag.execute([20, 30])) == 50  # one argument: its items
    with InputNode() as inp:
        dag = add.bind(inp["a"], inp["b"])
    assert skate.get(dag.execute({"a": 1, "b": 2})) == 3


def test_nested_nodes_in_lists_and_dicts(ray_start):
    with InputNode() as inp:
        dag = total.bind([add.bind(inp, 1), 5, add.bind(inp, 2)])
    assert skate.get(dag.execute(10)) == 28
    with InputNode() as inp:
        d = {"k": [inp]}
        node = add.bind(1, 2)
        nested = FunctionNode(total, ([node, d],), {}, {})
    assert nested._get_all_child_nodes() == [node, inp]


def test_class_node_and_methods_share_one_actor_per_execution(ray_start):
    with InputNode() as inp:
        counter = Counter.bind(100)
        first = counter.inc.bind(inp)
        dag = counter.inc.bind(first)
    assert isinstance(counter, ClassNode)
    assert isinstance(dag, ClassMethodNode)
    # first: 100 + 1 = 101; then inc(by=101) on the same actor -> 202
    assert skate.get(dag.execute(1)) == 202


def test_actor_handle_methods_bind(ray_start):
    c = Counter.remote(0)
    with InputNode() as inp:
        dag = c.inc.bind(inp)
    assert skate.get(dag.execute(5)) == 5
    assert skate.get(dag.execute(5)) == 10  # the same actor keeps its state
    assert skate.get(c.get.remote()) == 10


def test_multi_output_node_returns_a_list_of_refs(ray_start):
    a, b = Counter.remote(0), Counter.remote(100)
    with InputNode() as inp:
        dag = MultiOutputNode([a.inc.bind(inp), b.inc.bind(inp), add.bind(inp, inp)])
    refs = dag.execute(1)
    assert isinstance(refs, list) and all(isinstance(r, ObjectRef) for r in refs)
    assert skate.get(refs) == [1, 101, 2]


def test_get_args_kwargs_options_and_stable_uuid(ray_start):
    with InputNode() as inp:
        node = add.options(num_cpus=1).bind(inp, b=3)
    assert node.get_args() == (inp,)
    assert node.get_kwargs() == {"b": 3}
    assert node.get_options()["num_cpus"] == 1
    node.get_kwargs()["b"] = 4  # a copy
    assert node.get_kwargs() == {"b": 3}
    copy = node._copy([1], {"b": 3}, node.get_options(), {})
    assert copy.get_stable_uuid() == node.get_stable_uuid()
    assert skate.get(copy.execute()) == 4


def test_apply_recursive_visits_bottom_up_once_per_node(ray_start):
    with InputNode() as inp:
        shared = add.bind(inp, 1)
        dag = add.bind(shared, shared)
    seen = []

    def fn(node):
        seen.append(type(node).__name__)
        return node

    dag.apply_recursive(fn)
    assert seen == ["InputNode", "FunctionNode", "FunctionNode"]


def test_traverse_and_apply_visits_each_node_once(ray_start):
    with InputNode() as inp:
        shared = add.bind(inp[0], 1)
        dag = MultiOutputNode([add.bind(shared, 2), add.bind(shared, 3)])
    seen = []
    dag.traverse_and_apply(lambda n: seen.append(n))
    assert seen[0] is dag
    assert len(seen) == len({id(n) for n in seen}) == 6  # output, 2 adds, shared, inp[0], inp


def test_misuse_errors(ray_start):
    with InputNode() as inp:
        node = add.bind(inp, 1)
    with pytest.raises(AttributeError, match="cannot be used again"):
        node.bind(1)
    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used"):
        node.remote(1)
    with pytest.raises(ValueError, match="should not take any args"):
        InputNode(1)
    outside = InputNode()
    with pytest.raises(AssertionError, match="context manager"):
        add.bind(outside, 1).execute(1)
    with InputNode() as i1, InputNode() as i2:
        two = add.bind(i1, i2)
    with pytest.raises(AssertionError, match="only have one unique InputNode"):
        two.execute(1)
    with pytest.raises(ValueError, match="one unique InputNode"):
        two.traverse_and_apply(lambda n: None)
    with pytest.raises(TypeError):
        inp[1.5]
    with pytest.raises(AttributeError, match="has no method"):
        _ = Counter.bind().nope


def test_dag_input_data_picks_args_and_kwargs():
    d = DAGInputData(1, 2, x=3)
    assert (d[0], d[1], d["x"]) == (1, 2, 3)
    with pytest.raises(ValueError):
        d[1.0]
    assert issubclass(InputNode, DAGNode)
