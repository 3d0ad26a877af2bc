"""``inspect_serializability``: find what stops an object from pickling (follows Ray).

skate ships functions, classes and arguments with cloudpickle; when that
fails deep inside a closure the error rarely names the culprit.  This walks
the object -- a function's globals and nonlocals, an object's or class's
members -- down to ``depth`` levels, prints what it tries, and reports the
innermost members that still fail.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import IO, Any

import cloudpickle


class FailureTuple:
    """One object that fails to serialize.

    Attributes:
        obj: The object itself.
        name: The variable or member name it was found under (None at the top).
        parent: The object that refers to it (None at the top).
        path: The names walked from the top object down to it.
    """

    def __init__(self, obj: Any, name: str | None, parent: Any, path: tuple = ()) -> None:
        self.obj = obj
        self.name = name
        self.parent = parent
        self.path = path

    def __repr__(self) -> str:
        path = " -> ".join("unknown" if p is None else str(p) for p in self.path)
        return f"FailTuple({self.name} [path={path}, obj={self.obj!r}, parent={self.parent!r}])"


class _Printer:
    def __init__(self, file: IO | None) -> None:
        self.file = file
        self.level = 0

    @contextmanager
    def indent(self) -> Any:
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1

    def __call__(self, msg: str) -> None:
        print("    " * self.level + msg, file=self.file)


def inspect_serializability(
    base_obj: Any, name: str | None = None, depth: int = 3, print_file: IO | None = None
) -> tuple[bool, set[FailureTuple]]:
    """Tells whether ``base_obj`` serializes and, if not, which members fail (follows Ray).

    Args:
        base_obj: The object to check (a function, class, or any object).
        name: A name for it in the report.
        depth: How many levels of globals/nonlocals/members to walk.
        print_file: Where the report goes (``print``'s ``file``; default stdout).

    Returns:
        ``(True, set())`` when it serializes; otherwise ``(False, failures)``
        with a ``FailureTuple`` for each innermost failing object found (the
        object itself when no member is to blame).
    """
    printer = _Printer(print_file)
    title = f"Checking Serializability of {base_obj}"
    rule = "=" * min(len(title), 80)
    printer(rule)
    printer(title)
    printer(rule)
    failures: set[FailureTuple] = set()
    path = (name,) if name is not None else ()
    ok = _inspect(base_obj, name, depth, None, failures, printer, path)
    if not ok:
        printer(rule)
        listed = "\n".join(f"\t{f}" for f in failures)
        printer(f"Variable:\n\n{listed}\n\nwas found to be non-serializable. There may be other "
                "non-serializable variables that were not detected.")
        printer("Consider removing these variables, or creating them inside the function or "
                "class that uses them.")
    printer(rule)
    return ok, failures


def _inspect(obj: Any, name: str | None, depth: int, parent: Any, failures: set, printer: _Printer,
             path: tuple) -> bool:
    """True if ``obj`` pickles; else records the innermost failures under it."""
    if parent is not None:
        printer(f"Serializing {name!r} {obj}...")
    try:
        cloudpickle.dumps(obj)
        return True
    except Exception as e:  # noqa: BLE001 - any pickling error is what we report
        printer(f"!!! FAIL serialization: {e}")
    before = len(failures)
    if depth > 0:
        with printer.indent():
            if inspect.isfunction(obj):
                _inspect_function(obj, depth, failures, printer, path)
            else:
                _inspect_members(obj, depth, failures, printer, path)
    if len(failures) == before:  # no member to blame: this object is the culprit
        failures.add(FailureTuple(obj, name, parent, path))
    return False


def _inspect_function(fn: Any, depth: int, failures: set, printer: _Printer, path: tuple) -> None:
    closure = inspect.getclosurevars(fn)
    for kind, names in (("global", closure.globals), ("nonlocal", closure.nonlocals)):
        if not names:
            continue
        printer(f"Detected {len(names)} {kind} variables. Checking serializability...")
        with printer.indent():
            for var, value in names.items():
                if not _inspect(value, var, depth - 1, fn, failures, printer, path + (var,)):
                    return
    printer(f"WARNING: Did not find a non-serializable object in {fn}; it may be elsewhere.")


def _inspect_members(obj: Any, depth: int, failures: set, printer: _Printer, path: tuple) -> None:
    try:
        members = inspect.getmembers(obj)
    except Exception:  # noqa: BLE001 - objects with hostile __getattr__
        return
    for var, value in members:
        if (var.startswith("__") and var.endswith("__")) or inspect.isbuiltin(value):
            continue
        if not _inspect(value, var, depth - 1, obj, failures, printer, path + (var,)):
            return
    printer(f"WARNING: Did not find a non-serializable object in {obj}; it may be elsewhere.")


__all__ = ["FailureTuple", "inspect_serializability"]
