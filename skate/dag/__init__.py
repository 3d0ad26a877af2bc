"""Lazy task graphs and compiled graphs (``skate.dag``, follows Ray's ``ray.dag``).

``f.bind(...)``, ``Cls.bind(...)`` and ``handle.method.bind(...)`` build a
graph; ``execute()`` runs it with ordinary tasks and actor calls, and
``experimental_compile()`` turns a graph of actor method calls into a
``CompiledDAG`` whose executions skip the normal call path.
"""

from __future__ import annotations

from skate.dag.class_node import ClassMethodNode, ClassNode
from skate.dag.compiled_dag_node import CompiledDAG
from skate.dag.compiled_dag_ref import CompiledDAGFuture, CompiledDAGRef
from skate.dag.context import DAGContext
from skate.dag.dag_input import DAGInputData
from skate.dag.dag_node import DAGNode
from skate.dag.function_node import FunctionNode
from skate.dag.input_node import InputAttributeNode, InputNode
from skate.dag.output_node import MultiOutputNode

__all__ = [
    "ClassMethodNode",
    "ClassNode",
    "CompiledDAG",
    "CompiledDAGFuture",
    "CompiledDAGRef",
    "DAGContext",
    "DAGInputData",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
]
