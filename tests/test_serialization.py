"""Unit tests of value serialization and the shared-memory layout (no cluster)."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from skate._private import serialization as ser
from skate._private.serialization import SerializationError


class Box:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def roundtrip(value):
    data, bufs, refs = ser.dumps(value)
    assert refs == []
    return ser.loads(data, bufs)


@pytest.mark.parametrize(
    "value",
    [0, 2**100, -1.5, "s", "ü" * 10, b"b", None, True, [1, "a"], (1, (2,)), {"k": [1]}, {1, 2}, frozenset()],
    ids=repr,
)
def test_roundtrip_builtins(value):
    assert roundtrip(value) == value


def test_roundtrip_functions_and_classes():
    factor = 3

    def times(x):
        return x * factor

    assert roundtrip(times)(5) == 15
    assert roundtrip(lambda: "lam")() == "lam"

    class Local:
        def hello(self):
            return "hi"

    assert roundtrip(Local)().hello() == "hi"
    b = roundtrip(Box(a=1, b=[2]))
    assert (b.a, b.b) == (1, [2])


def test_dumps_returns_bytes_and_memoryviews():
    data, bufs, refs = ser.dumps({"x": 1})
    assert isinstance(data, bytes)
    assert bufs == [] and refs == []
    # Scalars use plain pickle.
    data, bufs, _ = ser.dumps(12)
    assert pickle.loads(data) == 12 and bufs == []


def test_numpy_buffers_are_out_of_band():
    arr = np.arange(100_000, dtype=np.float64)
    data, bufs, _ = ser.dumps(arr)
    assert len(bufs) == 1
    assert memoryview(bufs[0]).nbytes == arr.nbytes
    # The pickle stream itself does not carry the array's bytes.
    assert len(data) < 1000
    out = ser.loads(data, bufs)
    np.testing.assert_array_equal(out, arr)
    # Loaded in place: the result views the given buffer.
    backing = bytearray(memoryview(bufs[0]).cast("B"))
    out2 = ser.loads(data, [backing])
    assert np.shares_memory(out2, np.frombuffer(backing, dtype=np.uint8))


def test_several_arrays_in_one_value():
    value = {"a": np.ones(1000), "b": [np.zeros((10, 10), dtype=np.int32), np.arange(7)]}
    data, bufs, _ = ser.dumps(value)
    assert len(bufs) == 3
    out = ser.loads(data, bufs)
    np.testing.assert_array_equal(out["a"], value["a"])
    np.testing.assert_array_equal(out["b"][0], value["b"][0])
    np.testing.assert_array_equal(out["b"][1], value["b"][1])


def test_non_contiguous_array():
    arr = np.arange(100).reshape(10, 10)[:, ::3]
    np.testing.assert_array_equal(roundtrip(arr), arr)


# --- shared-memory layout -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "just a string",
        np.arange(12345, dtype=np.int16),
        {"a": np.ones(3, dtype=np.uint8), "b": np.zeros(1000), "c": "text"},
        [np.arange(i + 1, dtype=np.float32) for i in range(5)],
        np.zeros(0),
    ],
    ids=["no-buffers", "one-buffer", "mixed", "many-odd-sizes", "empty-array"],
)
def test_layout_roundtrip(value):
    data, bufs, _ = ser.dumps(value)
    size = ser.layout_size(data, bufs)
    assert size >= len(data) + sum(memoryview(b).nbytes for b in bufs)
    mem = bytearray(size)
    ser.write_layout(memoryview(mem), data, bufs)
    d2, b2 = ser.read_layout(memoryview(mem))
    assert bytes(d2) == data
    assert len(b2) == len(bufs)
    for got, want in zip(b2, bufs, strict=True):
        assert bytes(got) == bytes(memoryview(want).cast("B"))
    out = ser.loads(d2, b2)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(out, value)
    elif isinstance(value, dict):
        assert out["c"] == "text"
        np.testing.assert_array_equal(out["b"], value["b"])
    elif isinstance(value, list):
        for o, v in zip(out, value, strict=True):
            np.testing.assert_array_equal(o, v)
    else:
        assert out == value


@pytest.mark.parametrize(
    "value",
    ["just a string", np.arange(12345, dtype=np.int16), [np.arange(i + 1, dtype=np.float32) for i in range(5)]],
    ids=["no-buffers", "one-buffer", "many-odd-sizes"],
)
def test_layout_pieces_write_the_same_layout(value):
    data, bufs, _ = ser.dumps(value)
    size = ser.layout_size(data, bufs)
    want = bytearray(size)
    ser.write_layout(memoryview(want), data, bufs)
    got = bytearray(b"\xee" * size)  # a reused region: the padding may hold anything
    for off, piece in ser.layout_pieces(data, bufs):
        assert off + piece.nbytes <= size
        got[off : off + piece.nbytes] = piece
    d1, b1 = ser.read_layout(memoryview(want))
    d2, b2 = ser.read_layout(memoryview(got))
    assert bytes(d1) == bytes(d2) and [bytes(b) for b in b1] == [bytes(b) for b in b2]


def test_layout_buffers_are_aligned_and_zero_copy():
    value = [np.arange(n, dtype=np.uint8) for n in (1, 63, 64, 65, 1000)]
    data, bufs, _ = ser.dumps(value)
    mem = np.zeros(ser.layout_size(data, bufs) + ser.ALIGN, dtype=np.uint8)
    # Start the layout itself on an aligned address, as an mmap does.
    start = (-mem.ctypes.data) % ser.ALIGN
    region = memoryview(mem)[start : start + ser.layout_size(data, bufs)]
    ser.write_layout(region, data, bufs)
    d2, b2 = ser.read_layout(region)
    base = mem.ctypes.data + start
    for b in b2:
        addr = np.frombuffer(b, dtype=np.uint8).ctypes.data if len(b) else base
        assert (addr - base) % ser.ALIGN == 0
    out = ser.loads(d2, b2)
    for o, v in zip(out, value, strict=True):
        np.testing.assert_array_equal(o, v)
        if o.size:
            assert np.shares_memory(o, mem)  # not copied out of the region


def test_layout_size_is_small_for_tiny_values():
    data, bufs, _ = ser.dumps(None)
    assert 0 < ser.layout_size(data, bufs) <= 64 + len(data)


def test_read_only_region_gives_read_only_arrays():
    arr = np.arange(1000)
    data, bufs, _ = ser.dumps(arr)
    mem = bytearray(ser.layout_size(data, bufs))
    ser.write_layout(memoryview(mem), data, bufs)
    ro = memoryview(bytes(mem))
    d2, b2 = ser.read_layout(ro)
    out = ser.loads(d2, b2)
    assert not out.flags.writeable
    np.testing.assert_array_equal(out, arr)


# --- errors ----------------------------------------------------------------------------------------


def test_serialization_error_is_a_type_error():
    assert issubclass(SerializationError, TypeError)
    with pytest.raises(TypeError):
        ser.dumps(threading.Lock())


def test_error_names_the_culprit_path():
    value = {"ok": 1, "nested": {"items": [1, 2, threading.Lock()]}}
    with pytest.raises(SerializationError) as info:
        ser.dumps(value, "the value passed to put()")
    msg = str(info.value)
    assert "the value passed to put()['nested']['items'][2]" in msg
    assert "lock" in msg


def test_error_names_an_attribute():
    value = Box(name="x", conn=Box(lock=threading.Lock()))
    with pytest.raises(SerializationError) as info:
        ser.dumps(value, "arg")
    assert "arg.conn.lock" in str(info.value)


def test_error_names_a_captured_variable():
    guard = threading.Lock()

    def uses_guard():
        return guard.locked()

    with pytest.raises(SerializationError) as info:
        ser.dumps(uses_guard, "the remote function f")
    msg = str(info.value)
    assert "the remote function f" in msg
    assert "guard" in msg


def test_error_for_generator_names_the_value():
    gen = (i for i in range(3))
    with pytest.raises(SerializationError) as info:
        ser.dumps([1, gen], "argument 0")
    assert "argument 0[1]" in str(info.value)


def test_refs_collection_is_restored_after_errors():
    assert ser.contained_refs() is None
    with pytest.raises(SerializationError):
        ser.dumps(threading.Lock())
    assert ser.contained_refs() is None
    ser.dumps([1, 2])
    assert ser.contained_refs() is None
