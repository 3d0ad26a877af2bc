"""Unit tests of the node's shared-memory store accounting (no cluster)."""

from __future__ import annotations

import os

import pytest
from conftest import object_id, shm_files

from skate._private.object_store import shm
from skate._private.object_store.store import ObjectStore, StoreFull

KB = 1024
MB = 1024 * KB


def _make(store: ObjectStore, oid: bytes, size: int, fill: int, primary: bool = True) -> str:
    """Reserves, writes and seals one object, as a producer does."""
    path = store.reserve(oid, size, primary)
    m = shm.create(path, size)
    try:
        m[:] = bytes([fill]) * size
    finally:
        m.close()
    store.seal(oid)
    return path


def _read(path: str) -> bytes:
    m = shm.open_readonly(path)
    try:
        return bytes(m)
    finally:
        m.close()


@pytest.fixture
def store(prefix, tmp_path):
    s = ObjectStore(prefix, 10 * 100 * KB, str(tmp_path / "spill"))
    yield s
    s.clear()


def test_reserve_seal_contains(store, prefix):
    oid = object_id(1)
    path = store.reserve(oid, 100 * KB)
    assert path == shm.segment_path(prefix, oid)
    assert os.path.basename(path).startswith(prefix + "-")
    assert store.used == 100 * KB
    assert not store.contains(oid)  # not sealed yet
    assert store.ensure_local(oid) is None
    m = shm.create(path, 100 * KB)
    m[:5] = b"hello"
    m.close()
    store.seal(oid)
    assert store.contains(oid)
    assert store.ensure_local(oid) == path
    assert _read(path)[:5] == b"hello"
    assert store.read_bytes(oid)[:5] == b"hello"
    assert store.stats()["objects"] == 1
    assert store.stats()["used"] == 100 * KB


def test_reserve_twice_returns_the_same_segment(store):
    oid = object_id(1)
    p1 = store.reserve(oid, 50 * KB)
    p2 = store.reserve(oid, 50 * KB)
    assert p1 == p2
    assert store.used == 50 * KB


def test_unknown_objects(store):
    assert not store.contains(object_id(9))
    assert store.ensure_local(object_id(9)) is None
    assert store.read_bytes(object_id(9)) is None
    store.free(object_id(9))  # no error
    store.seal(object_id(9))  # no error
    assert store.used == 0


def test_free_removes_segment_and_space(store, prefix):
    oid = object_id(1)
    path = _make(store, oid, 100 * KB, 1)
    assert os.path.exists(path)
    store.free(oid)
    assert not os.path.exists(path)
    assert not store.contains(oid)
    assert store.used == 0
    assert shm_files(prefix) == set()


def test_object_larger_than_capacity_gets_a_disk_backed_segment(store, prefix):
    _make(store, object_id(9), 200 * KB, 9)  # an object in memory, which stays there
    size = store.capacity + 1
    path = _make(store, object_id(1), size, 7)
    assert path.startswith(store.spill_dir) and not shm_files(prefix) - {os.path.basename(store.objects[object_id(9)].path)}
    assert os.stat(path).st_blocks * 512 >= size  # its blocks are allocated up front
    assert store.used == 200 * KB  # not counted against the memory store, nothing spilled for it
    assert store.stats()["spilled"] == 0
    assert store.stats()["disk_backed"] == 1 and store.stats()["disk_backed_bytes"] == size
    assert store.ensure_local(object_id(1)) == path and _read(path) == bytes([7]) * size
    assert store.read_range(object_id(1), size - 3, 10) == (size, bytes([7]) * 3)
    # Never picked to spill, never recycled into the pool.
    _make(store, object_id(2), store.capacity - 100 * KB, 2)
    assert store.objects[object_id(1)].spilled_path is None and os.path.exists(path)
    store.free(object_id(1))
    assert not os.path.exists(path)
    assert store.stats()["disk_backed_bytes"] == 0 and not store.pool


def test_a_mapped_disk_backed_segment_goes_on_the_last_unmap(store):
    path = _make(store, object_id(1), store.capacity * 2, 1)
    store.map_added(object_id(1))
    store.free(object_id(1))
    assert os.path.exists(path)  # a reader still maps it
    store.map_removed(object_id(1))
    assert not os.path.exists(path) and store.used == 0 and not store.pool


def test_no_disk_for_a_disk_backed_segment_is_store_full(store, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(StoreFull) as info:
        store.reserve(object_id(1), store.capacity + 1)
    msg = str(info.value)
    assert str(store.capacity) in msg and "No space left" in msg
    assert not store.objects and not os.listdir(store.spill_dir)


def test_spill_least_recently_used_first(store, tmp_path):
    size = 300 * KB  # 3 fit in 1000 KB
    paths = [_make(store, object_id(i), size, i + 1) for i in range(3)]
    assert store.used == 3 * size
    store.ensure_local(object_id(0))  # 0 is now the most recently used
    p3 = _make(store, object_id(3), size, 4)
    # Object 1 (least recently used) went to disk.
    assert not os.path.exists(paths[1])
    assert os.path.exists(paths[0]) and os.path.exists(paths[2]) and os.path.exists(p3)
    st = store.stats()
    assert st["spilled"] == 1
    assert st["spilled_bytes_total"] == size
    assert store.used == 3 * size
    assert store.contains(object_id(1))  # spilled objects are still there
    assert os.listdir(tmp_path / "spill") == [object_id(1).hex()]
    # read_bytes works on a spilled object without restoring it.
    assert store.read_bytes(object_id(1)) == bytes([2]) * size
    assert not os.path.exists(paths[1])


def test_restore_spilled(store, tmp_path):
    size = 300 * KB
    for i in range(4):
        _make(store, object_id(i), size, i + 1)
    assert store.stats()["spilled"] == 1
    spilled = [o for o, obj in store.objects.items() if obj.spilled_path][0]
    path = store.ensure_local(spilled)
    assert path is not None and os.path.exists(path)
    assert _read(path) == bytes([_oid_index(spilled) + 1]) * size
    st = store.stats()
    assert st["restored_bytes_total"] == size
    assert st["spilled"] == 1  # restoring made room by spilling another
    assert store.used <= store.capacity
    assert len(os.listdir(tmp_path / "spill")) == 1
    # Every object reads back with its own contents.
    for i in range(4):
        p = store.ensure_local(object_id(i))
        assert _read(p) == bytes([i + 1]) * size
        assert store.used <= store.capacity


def _oid_index(oid: bytes) -> int:
    return int.from_bytes(oid[:4], "little")


def test_free_spilled_object_removes_the_file(store, tmp_path):
    size = 300 * KB
    for i in range(4):
        _make(store, object_id(i), size, i + 1)
    spilled = [o for o, obj in store.objects.items() if obj.spilled_path][0]
    used = store.used
    store.free(spilled)
    assert os.listdir(tmp_path / "spill") == []
    assert store.used == used  # a spilled object took no memory
    assert not store.contains(spilled)


def test_secondary_copies_dropped_before_spilling(store, tmp_path):
    size = 300 * KB
    _make(store, object_id(0), size, 1, primary=False)  # oldest, but a copy
    _make(store, object_id(1), size, 2)
    _make(store, object_id(2), size, 3)
    _make(store, object_id(3), size, 4)
    assert not store.contains(object_id(0))  # dropped, not spilled
    assert not os.path.exists(tmp_path / "spill") or os.listdir(tmp_path / "spill") == []
    assert store.stats()["spilled"] == 0
    assert all(store.contains(object_id(i)) for i in (1, 2, 3))


def test_unsealed_objects_are_not_evicted(store):
    size = 300 * KB
    for i in range(3):
        store.reserve(object_id(i), size)  # being written: not sealed
    with pytest.raises(StoreFull) as info:
        store.reserve(object_id(3), size)
    assert "full" in str(info.value)
    assert store.used == 3 * size
    assert not store.contains(object_id(3))


def test_freed_space_is_reused(store, prefix):
    size = 400 * KB
    for round_ in range(10):
        oid = object_id(round_)
        _make(store, oid, size, round_ + 1)
        store.free(oid)
        assert store.used <= store.capacity
    assert store.stats()["spilled_bytes_total"] == 0
    assert len(shm_files(prefix)) <= 2


@pytest.mark.parametrize("size", [2 * MB])
def test_recycled_segment_holds_the_new_object(prefix, tmp_path, size):
    s = ObjectStore(prefix, 10 * size, str(tmp_path / "spill"))
    try:
        _make(s, object_id(1), size, 1)
        s.free(object_id(1))
        assert not s.contains(object_id(1))
        path = _make(s, object_id(2), size, 2)
        assert path == shm.segment_path(prefix, object_id(2))
        assert os.path.getsize(path) == size
        assert _read(path) == bytes([2]) * size
        s.free(object_id(2))
        assert s.used <= s.capacity
    finally:
        s.clear()
    assert shm_files(prefix) == set()


def test_mapped_segment_is_not_reused(prefix, tmp_path):
    size = 2 * MB
    s = ObjectStore(prefix, 10 * size, str(tmp_path / "spill"))
    try:
        path = _make(s, object_id(1), size, 1)
        s.map_added(object_id(1))
        reader = shm.open_readonly(path)
        s.free(object_id(1))
        # A reader still maps it: the new object must not overwrite it.
        _make(s, object_id(2), size, 2)
        assert reader[:1] == b"\x01" and reader[size - 1 : size] == b"\x01"
        reader.close()
        s.map_removed(object_id(1))
    finally:
        s.clear()


def test_clear(store, prefix, tmp_path):
    size = 300 * KB
    for i in range(5):
        _make(store, object_id(i), size, i + 1)
    store.reserve(object_id(10), 10 * KB)  # unsealed
    assert shm_files(prefix)
    store.clear()
    assert shm_files(prefix) == set()
    assert not os.path.exists(tmp_path / "spill")
    assert not store.objects


def test_shm_helpers(prefix):
    path = shm.segment_path(prefix, b"\xab" * 4)
    assert path.endswith(f"{prefix}-abababab")
    m = shm.create(path, 4096)
    m[:3] = b"abc"
    m.close()
    r = shm.open_readonly(path)
    assert r[:3] == b"abc" and len(r) == 4096
    with pytest.raises(TypeError):
        r[0] = 1
    r.close()
    shm.unlink(path)
    shm.unlink(path)  # a missing segment is fine
    assert not os.path.exists(path)


@pytest.mark.parametrize("size", [1, 4096, 3 * MB + 17])
def test_write_pieces_new_and_recycled_segments(prefix, size):
    path = shm.segment_path(prefix, b"\xcd" * 4)
    try:
        shm.write_pieces(path, size, [(0, b"\x01" * size)])
        assert _read(path) == b"\x01" * size
        # Reused (as the store recycles segments), smaller: truncated and overwritten.
        half = max(size // 2, 1)
        shm.write_pieces(path, half, [(0, b"ab"[: min(2, half)]), (min(2, half), b"\x02" * (half - min(2, half)))])
        assert os.path.getsize(path) == half
        assert _read(path) == (b"ab" + b"\x02" * half)[:half]
        os.chmod(path, 0o644)  # no longer owner-only: refused, as a planted file would be
        with pytest.raises(shm.ForeignSegmentError):
            shm.write_pieces(path, size, [(0, b"x")])
    finally:
        shm.unlink(path)


def test_objects_readers_map_are_neither_dropped_nor_spilled(store):
    # Capacity 1000 KB: a mapped secondary copy and a mapped primary, then a newcomer.
    copy = _make(store, object_id(1), 400 * KB, 1, primary=False)
    prim = _make(store, object_id(2), 400 * KB, 2)
    _make(store, object_id(3), 100 * KB, 3)
    store.map_added(object_id(1))
    store.map_added(object_id(2))
    with pytest.raises(StoreFull):
        store.reserve(object_id(4), 400 * KB)  # only the unmapped 100 KB could go
    assert os.path.exists(copy) and os.path.exists(prim) and store.objects[object_id(3)].spilled_path is None
    store.map_removed(object_id(1))  # the reader let the copy go: it may be dropped now
    store.reserve(object_id(4), 400 * KB)
    assert object_id(1) not in store.objects and not os.path.exists(copy)
    assert os.path.exists(prim) and store.objects[object_id(2)].spilled_path is None
    store.map_removed(object_id(2))
