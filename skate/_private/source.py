"""Shipping code with its file name and source lines, for readable remote tracebacks.

cloudpickle pickles functions and classes defined in ``__main__`` (or in
modules registered to go by value) together with their code objects, but
names every such code object's file ``<dynamic-code>``, so a worker's
traceback shows neither the file nor the source line.  ``dumps_code`` pickles
them with a code reducer that keeps the real file name and carries the
file's lines; the worker, on loading, registers those lines with
``linecache``, so ``traceback`` shows the user's path and source text even
when the file does not exist on the worker's machine.
"""

from __future__ import annotations

import io
import linecache
import types
from collections import ChainMap
from typing import Any

import cloudpickle

_PLACEHOLDER = "<dynamic-code>"
_MAX_SOURCE_BYTES = 1 << 20  # files larger than this go without their lines
_base_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple:
    rebuild, args = _base_code_reduce(code)
    filename = code.co_filename
    if filename.startswith("<") or _PLACEHOLDER not in args:
        return rebuild, args
    args = list(args)
    args[args.index(_PLACEHOLDER)] = filename
    lines = linecache.getlines(filename)
    if sum(len(ln) for ln in lines) > _MAX_SOURCE_BYTES:
        lines = []
    return _rebuild_code, (rebuild, tuple(args), filename, lines)


def _rebuild_code(rebuild: Any, args: tuple, filename: str, lines: list) -> types.CodeType:
    if lines:
        cached = linecache.cache.get(filename)
        if cached is None or cached[2] != lines:
            # No mtime: linecache.checkcache leaves the entry alone.
            linecache.cache[filename] = (sum(len(ln) for ln in lines), None, lines, filename)
    return rebuild(*args)


class _SourcePickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def dumps_code(obj: Any) -> bytes:
    """Pickles a function or class like ``cloudpickle.dumps``, keeping file names and
    source lines of code shipped by value (see the module docstring)."""
    f = io.BytesIO()
    _SourcePickler(f, protocol=5).dump(obj)
    return f.getvalue()
