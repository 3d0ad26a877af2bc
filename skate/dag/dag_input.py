"""What a graph's input stands for in one execution (shared by the nodes, the compiler and the actors)."""

from __future__ import annotations

from typing import Any


class DAGInputData:
    """The input of one execution given as several arguments: ``execute(1, 2, x=3)``.

    ``data[0]`` is the first positional argument, ``data["x"]`` the keyword
    argument ``x``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = list(args)
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._args[key]
        if isinstance(key, str):
            return self._kwargs[key]
        raise ValueError("Please only use int index or str as first-level key to access fields of dag input.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DAGInputData) and (self._args, self._kwargs) == (other._args, other._kwargs)

    def __repr__(self) -> str:
        return f"DAGInputData(args={self._args!r}, kwargs={self._kwargs!r})"


def input_value(args: tuple, kwargs: dict) -> Any:
    """What an InputNode stands for in one execution: the only argument, or all of them."""
    if len(args) == 1 and not kwargs:
        return args[0]
    return DAGInputData(*args, **kwargs)


def pick(value: Any, key: int | str, accessor: str) -> Any:
    """The part of an execution's input an InputAttributeNode stands for."""
    if isinstance(value, DAGInputData):
        return value[key]
    if accessor == "__getattr__":
        return getattr(value, key)
    return value[key]
