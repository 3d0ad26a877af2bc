"""Turning values into bytes and back.

Values are pickled with protocol 5 and out-of-band buffers: a numpy array's
memory is not copied into the pickle stream but kept as a separate buffer, so
it can be written once into shared memory and later read back in place.
Plain pickle is used for builtin scalars; anything else goes through
cloudpickle, which also handles functions and classes defined in ``__main__``.

``ObjectRef`` values met while pickling are collected in a per-thread list,
so the caller knows which refs a payload carries (see ``ownership``).
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import struct
import threading
from typing import Any

import cloudpickle

_local = threading.local()
_SCALARS = (int, float, str, bytes, bool, type(None))


class SerializationError(TypeError):
    """A value could not be serialized; the message names which part."""


def contained_refs() -> list | None:
    """The list collecting refs for the serialization running on this thread."""
    return getattr(_local, "refs", None)


def dumps(value: Any, what: str | tuple[str, str] = "value") -> tuple[bytes, list, list]:
    """Serializes ``value``; ``what`` names it in an error (a ``(prefix, name)``
    pair is joined only then: no string is built per call).

    Returns:
        ``(data, buffers, refs)``: the pickle stream, its out-of-band buffers
        (as ``memoryview`` objects) and the ObjectRefs found inside.

    Raises:
        SerializationError: naming the part of ``value`` that cannot be pickled.
    """
    bufs: list = []
    prev = getattr(_local, "refs", None)
    refs: list = []
    _local.refs = refs
    try:
        if type(value) in _SCALARS:
            data = pickle.dumps(value, 5)
        else:
            data = cloudpickle.dumps(value, 5, buffer_callback=bufs.append)
    except Exception as e:
        raise SerializationError(explain(value, what_text(what), e)) from e
    finally:
        _local.refs = prev
    return data, [b.raw() for b in bufs], refs


def what_text(what: str | tuple[str, str]) -> str:
    """``what`` as ``dumps`` names it (see there)."""
    return what if isinstance(what, str) else what[0] + what[1]


@contextlib.contextmanager
def gc_paused() -> Any:
    """Pauses the cyclic garbage collector while many values are deserialized
    (unless it is off already): every value kept alive would otherwise count
    towards the next collection, and a ``get`` of 10,000 objects spent a third
    of its time in collections that found nothing.  A collection owed runs at
    the next allocation after.  (Another thread turning the collector off
    meanwhile is turned back on at the end, as with Ray's deserializer.)"""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def loads(data: bytes | memoryview, buffers: list | None = None) -> Any:
    """Deserializes what ``dumps`` produced; buffers are used in place."""
    return pickle.loads(data, buffers=buffers or ())


def explain(value: Any, what: str, err: Exception) -> str:
    path = _find_culprit(value, what, depth=0, seen=set())
    culprit = path or what
    return (
        f"Could not serialize {culprit} ({type(value).__name__ if not path else 'see path'}): "
        f"{type(err).__name__}: {err}. Objects holding locks, sockets, open files or "
        "generators cannot be sent to another process; create them inside the task or actor."
    )


def _find_culprit(value: Any, path: str, depth: int, seen: set) -> str | None:
    """The deepest attribute/item path of ``value`` that fails to pickle."""
    if depth > 4 or id(value) in seen:
        return None
    seen.add(id(value))
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in list(value.items())[:50]]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(list(value)[:50])]
    else:
        closure = getattr(value, "__closure__", None)
        code = getattr(value, "__code__", None)
        if closure and code:
            children = [
                (f"{path} (captured variable {name!r})", c.cell_contents)
                for name, c in zip(code.co_freevars, closure, strict=False)
                if _cell_ok(c)
            ]
        if code is not None:
            glb = getattr(value, "__globals__", {})
            children += [
                (f"{path} (global {name!r})", glb[name]) for name in code.co_names if name in glb
            ]
        d = getattr(value, "__dict__", None)
        if isinstance(d, dict):
            children += [(f"{path}.{k}", v) for k, v in list(d.items())[:50]]
    for child_path, child in children:
        try:
            cloudpickle.dumps(child, 5)
        except Exception:
            deeper = _find_culprit(child, child_path, depth + 1, seen)
            return deeper or f"{child_path} (a {type(child).__name__} object)"
    return None


def _cell_ok(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
        return True
    except ValueError:
        return False


# --- shared-memory layout ----------------------------------------------------
#
#   <u64 data length><u32 buffer count>{<u64 offset><u64 length>}*
#   <pickle data> <pad to 64> <buffer 0> <pad to 64> <buffer 1> ...
#
# Buffers are 64-byte aligned so numpy can use them in place.

_HEAD = struct.Struct("<QI")
_ENTRY = struct.Struct("<QQ")
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def layout_size(data: bytes, bufs: list) -> int:
    """Bytes needed to lay out a serialized value in shared memory."""
    off = _align(_HEAD.size + _ENTRY.size * len(bufs) + len(data))
    for b in bufs:
        off = _align(off + memoryview(b).nbytes)
    return max(off, 1)


def write_layout(mem: memoryview, data: bytes, bufs: list) -> None:
    """Writes a serialized value into ``mem`` (sized by ``layout_size``)."""
    n = len(bufs)
    _HEAD.pack_into(mem, 0, len(data), n)
    pos = _HEAD.size + _ENTRY.size * n
    mem[pos : pos + len(data)] = data
    off = _align(pos + len(data))
    for i, b in enumerate(bufs):
        mv = memoryview(b).cast("B")
        ln = mv.nbytes
        _ENTRY.pack_into(mem, _HEAD.size + _ENTRY.size * i, off, ln)
        mem[off : off + ln] = mv
        off = _align(off + ln)


def layout_pieces(data: bytes, bufs: list) -> list[tuple[int, memoryview]]:
    """The layout ``write_layout`` makes, as ``(offset, bytes)`` pieces to write
    at those offsets of a zero-filled or reused file (the gaps are padding)."""
    n = len(bufs)
    views = [memoryview(b).cast("B") for b in bufs]
    head = bytearray(_HEAD.size + _ENTRY.size * n)
    _HEAD.pack_into(head, 0, len(data), n)
    off = _align(len(head) + len(data))
    pieces: list[tuple[int, memoryview]] = []
    for i, mv in enumerate(views):
        _ENTRY.pack_into(head, _HEAD.size + _ENTRY.size * i, off, mv.nbytes)
        pieces.append((off, mv))
        off = _align(off + mv.nbytes)
    return [(0, memoryview(head)), (len(head), memoryview(data)), *pieces]


def read_layout(mem: memoryview, head: bytes | None = None) -> tuple[memoryview, list]:
    """The pickle data and buffers laid out in ``mem``, as views (no copy).

    ``head``: the region's first bytes, read already; the header and pickle
    data are taken from it when it holds them, so ``mem`` itself is not read.
    """
    src = head if head is not None and len(head) >= _HEAD.size else mem
    dlen, n = _HEAD.unpack_from(src, 0)
    pos = _HEAD.size + _ENTRY.size * n
    if len(src) < pos + dlen:
        src = mem
    bufs = []
    for i in range(n):
        off, ln = _ENTRY.unpack_from(src, _HEAD.size + _ENTRY.size * i)
        bufs.append(mem[off : off + ln])
    return memoryview(src)[pos : pos + dlen], bufs
