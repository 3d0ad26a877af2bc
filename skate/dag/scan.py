"""Finding and replacing DAG nodes inside bound arguments (lists, tuples, dicts).

Kept apart from the node classes so that the compiler and the nodes share
it without importing each other; a node is anything whose class sets
``_skate_dag_node``.
"""

from __future__ import annotations

from typing import Any


def is_node(value: Any) -> bool:
    """True for a DAG node."""
    return getattr(type(value), "_skate_dag_node", False)


def find_nodes(value: Any, out: list) -> None:
    """Appends to ``out`` every DAG node in ``value`` (nested in lists, tuples, dicts), once."""
    if is_node(value):
        if not any(value is n for n in out):
            out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            find_nodes(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            find_nodes(v, out)


def replace_nodes(value: Any, table: dict[int, Any]) -> Any:
    """A copy of ``value`` with each DAG node ``n`` replaced by ``table[id(n)]``."""
    if is_node(value):
        return table[id(value)]
    if isinstance(value, list):
        return [replace_nodes(v, table) for v in value]
    if isinstance(value, tuple):
        items = [replace_nodes(v, table) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return {k: replace_nodes(v, table) for k, v in value.items()}
    return value
