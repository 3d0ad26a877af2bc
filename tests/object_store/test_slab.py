"""Slabs: objects of up to 1 MiB in slots of shared files (``object_store.slab``).

Unit tests drive the allocator and the store directly; the end-to-end tests
put, get, pass and free such objects on a real local cluster and across two
node daemons.
"""

from __future__ import annotations

import gc
import os

import pytest
from conftest import object_id, shm_files, wait_for

from skate._private.object_store import shm, slab
from skate._private.object_store.store import ObjectStore

KB = 1024
pytestmark = pytest.mark.timeout(120)


def _make(store: ObjectStore, oid: bytes, size: int, fill: int) -> str:
    """Reserves a slot, writes and seals it, as a producer does."""
    loc = store.reserve(oid, size, slot=True)
    slab.write(loc, [(0, bytes([fill]) * size)])
    store.seal(oid)
    return loc


def _read(reader: slab.SlabReader, loc: str) -> bytes:
    view, _head = reader.view(loc, lambda _arg: None, None)
    return bytes(view)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 100 * KB, 131_264, 300 * KB, 1 << 20])
def test_size_classes_are_page_multiples_close_above_the_size(size):
    c = slab.size_class(size)
    assert c >= size and c % slab.PAGE == 0
    assert c <= size + max(slab.PAGE, size // 8)


def test_location_round_trip():
    loc = slab.location("/dev/shm/p-slab3", 4096, 77)
    assert slab.parse(loc) == ("/dev/shm/p-slab3", 4096, 77)
    assert slab.parse("/dev/shm/p-abcdef") is None


def test_slots_are_reused_their_memory_returned_and_empty_slabs_unlinked(prefix):
    alloc = slab.SlabAllocator(os.path.join(shm.SHM_DIR or "/tmp", prefix))  # no warm slots
    size = 200 * KB
    (s1, off1, w1), (s2, off2, w2) = alloc.alloc(size), alloc.alloc(size)
    assert s1 is s2 and off1 != off2, "one slab holds both"
    assert not w1 and not w2, "a new slab's slots have no memory yet"
    for off, fill in ((off1, 1), (off2, 2)):
        slab.write(slab.location(s1.path, off, size), [(0, bytes([fill]) * size)])
    blocks = os.stat(s1.path).st_blocks
    assert alloc.release(s1, off1) == s1.slot
    assert os.stat(s1.path).st_blocks < blocks, "a released slot's pages go back"
    s3, off3, _ = alloc.alloc(size)
    assert (s3, off3) == (s1, off1), "a released slot is reused"
    assert alloc.stats() == {"slabs": 1, "slab_slots_used": 2, "slab_warm_bytes": 0}
    alloc.release(s1, off3)
    alloc.release(s1, off2)
    assert not os.path.exists(s1.path), "a slab with no object left is unlinked"
    assert alloc.stats() == {"slabs": 0, "slab_slots_used": 0, "slab_warm_bytes": 0}


def test_released_slots_stay_warm_up_to_the_limit_until_trimmed(prefix):
    size = 200 * KB
    cls = slab.size_class(size)
    alloc = slab.SlabAllocator(os.path.join(shm.SHM_DIR or "/tmp", prefix), warm_limit=cls)
    (s, a, _), (_, b, _) = alloc.alloc(size), alloc.alloc(size)
    for off in (a, b):
        slab.write(slab.location(s.path, off, size), [(0, b"w" * size)])
    blocks = os.stat(s.path).st_blocks
    assert alloc.release(s, a) == 0, "kept warm: no memory given back"
    assert os.stat(s.path).st_blocks == blocks and alloc.warm_bytes == cls
    assert alloc.release(s, b) == cls, "over the limit: given back"
    assert alloc.has_warm(size) and not alloc.has_warm(4 * size)
    s2, off, warm = alloc.alloc(size)
    assert (s2, off, warm) == (s, a, True), "a warm slot is taken first"
    assert alloc.release(s, a) == 0
    assert os.path.exists(s.path), "a slab with a warm slot stays"
    assert alloc.trim() == cls and alloc.warm_bytes == 0
    assert not os.path.exists(s.path), "trimmed and empty: unlinked"


def test_store_puts_small_objects_in_slots_and_large_ones_in_segments(prefix, tmp_path):
    store = ObjectStore(prefix, 64 << 20, str(tmp_path / "spill"))
    reader = slab.SlabReader()
    try:
        loc = _make(store, object_id(1), 200 * KB, 7)
        assert slab.parse(loc) is not None
        assert store.reserve(object_id(1), 200 * KB, slot=True) == loc, "reserving again names the same slot"
        assert store.used == slab.size_class(200 * KB), "a slot counts its whole size"
        big = store.reserve(object_id(2), 2 << 20, slot=True)
        assert slab.parse(big) is None, "above 1 MiB: a segment of its own"
        assert store.reserve(object_id(3), 200 * KB) == shm.segment_path(prefix, object_id(3)), "no slot unless asked"
        assert _read(reader, loc) == bytes([7]) * 200 * KB
        assert store.read_bytes(object_id(1)) == bytes([7]) * 200 * KB
        assert store.read_range(object_id(1), 100, 10) == (200 * KB, bytes([7]) * 10)
        used = store.used
        store.free(object_id(1))
        st = store.stats()
        assert st["slab_slots_used"] == 0 and st["slab_warm_bytes"] == slab.size_class(200 * KB)
        assert store.used == used, "a warm slot's memory is still counted"
        again = store.reserve(object_id(4), 199 * KB, slot=True)
        assert slab.parse(again)[:2] == slab.parse(loc)[:2], "the warm slot takes the next object of its class"
        assert store.used == used
    finally:
        store.clear()
    assert shm_files(prefix) == set()


def test_a_slot_a_reader_still_views_is_not_reused(prefix, tmp_path):
    store = ObjectStore(prefix, 64 << 20, str(tmp_path / "spill"))
    reader = slab.SlabReader()
    size = 150 * KB
    try:
        _make(store, object_id(0), size, 9)  # keeps the slab alive throughout
        loc = _make(store, object_id(1), size, 1)
        store.map_added(object_id(1))
        released = []
        view, head = reader.view(loc, released.append, object_id(1))
        assert head == b"\x01" * 2048
        store.free(object_id(1))
        loc2 = _make(store, object_id(2), size, 2)
        assert loc2 != loc, "the freed slot is still viewed: not handed out"
        part = view[-10:]
        del view
        gc.collect()
        assert released == [] and bytes(part) == b"\x01" * 10, "a view derived from the slot keeps it"
        del part
        gc.collect()
        assert released == [object_id(1)], "released once its last view is gone"
        store.map_removed(object_id(1))
        loc3 = _make(store, object_id(3), size, 3)
        assert loc3 == loc, "once unmapped, the slot is reused"
        assert _read(reader, loc3) == b"\x03" * size
    finally:
        store.clear()
    assert shm_files(prefix) == set()


def test_slot_objects_spill_and_come_back_as_segments(prefix, tmp_path):
    size = 300 * KB  # a 320 KiB slot: 3 fit in 1000 KiB
    store = ObjectStore(prefix, 1000 * KB, str(tmp_path / "spill"))
    reader = slab.SlabReader()
    try:
        for i in range(5):
            _make(store, object_id(i), size, i + 1)
            assert store.used <= store.capacity
        st = store.stats()
        assert st["spilled"] == 2 and st["slab_slots_used"] == 3
        for i in range(5):
            loc = store.ensure_local(object_id(i))
            assert store.used <= store.capacity
            data = _read(reader, loc) if slab.parse(loc) else shm.open_readonly(loc)[:]
            assert data == bytes([i + 1]) * size, f"object {i} came back intact"
        spilled = [o for o, obj in store.objects.items() if obj.spilled_path]
        assert spilled and store.read_bytes(spilled[0]) == bytes([int.from_bytes(spilled[0][:4], "little") + 1]) * size
    finally:
        store.clear()
    assert shm_files(prefix) == set()
    assert not os.path.exists(tmp_path / "spill")


def test_a_planted_slab_file_is_refused(prefix):
    path = os.path.join(shm.SHM_DIR or "/tmp", f"{prefix}-slab1")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)  # readable by others: not skate's
    os.ftruncate(fd, 8192)
    os.close(fd)
    with pytest.raises(shm.ForeignSegmentError):
        slab.SlabReader().view(slab.location(path, 0, 100), lambda _arg: None, None)
    with pytest.raises(shm.ForeignSegmentError):
        slab.write(slab.location(path, 0, 4), [(0, b"evil")])


# --- end to end -----------------------------------------------------------------------------------
def _node_store() -> dict:
    from skate._private import runtime

    core = runtime.current()

    async def go() -> dict:
        return await core.raylet.request("node_stats")

    return core.call(go(), timeout=10)["store"]


def test_values_in_slots_read_zero_copy_in_drivers_and_workers(ray_start):
    np = pytest.importorskip("numpy")
    ray = ray_start
    arrays = [np.full(50_000, i, dtype=np.int32) for i in range(20)]  # 200 KB each
    refs = [ray.put(a) for a in arrays]
    st = _node_store()
    assert st["slab_slots_used"] == 20 and st["slabs"] >= 1
    got = ray.get(refs)
    for i, g in enumerate(got):
        assert g.dtype == np.int32 and g.shape == (50_000,) and int(g[0]) == i and int(g[-1]) == i
        assert not g.flags.writeable, "a value read from the store is read-only, as in Ray"

    @ray.remote
    def total(*xs):
        return sum(int(x.sum()) for x in xs)

    assert ray.get(total.remote(*refs)) == sum(50_000 * i for i in range(20))

    @ray.remote
    def make(i):
        return np.full(50_000, i, dtype=np.int32)

    made = ray.get([make.remote(i) for i in range(5)])
    assert [int(m[7]) for m in made] == list(range(5))
    del got, made, refs, g
    gc.collect()
    wait_for(lambda: _node_store()["slab_slots_used"] == 0, 10, what="every slot to be freed")


def test_slot_objects_move_between_nodes(cluster):
    np = pytest.importorskip("numpy")
    import skate

    cluster.add_node(num_cpus=1, resources={"other": 1})
    skate.init(address=cluster.address)

    @skate.remote(resources={"other": 1})
    def there(x):
        return int(x.sum()), np.full(60_000, 3, dtype=np.int32)  # made on the other node

    ref = skate.put(np.full(60_000, 2, dtype=np.int32))  # 240 KB, in a slot here
    s, back = skate.get(there.remote(ref))
    assert s == 120_000 and int(back.sum()) == 180_000
    del back, ref


@pytest.mark.parametrize("freed", [False, True])
def test_a_slot_read_while_it_is_spilled_stays_in_memory(prefix, tmp_path, freed):
    """A reader told a slot's location while the slot is copied to disk keeps
    reading that slot: the spill is dropped (and, if the object was freed
    meanwhile, the slot goes on the reader's last unmap)."""
    from skate._private.object_store.store import spill_files

    size = 300 * KB
    store = ObjectStore(prefix, 1000 * KB, str(tmp_path / "spill"))
    reader = slab.SlabReader()
    try:
        locs = [_make(store, object_id(i), size, i + 1) for i in range(3)]
        victims = store.plan_room(slab.size_class(size), object_id(9))
        assert [oid for oid, _ in victims] == [object_id(0)]
        store.map_added(object_id(0))  # obj_get answered while the copy is made
        if freed:
            store.free(object_id(0))
        store.finish_spill(victims, spill_files(store.spill_dir, victims))
        assert _read(reader, locs[0]) == b"\x01" * size
        assert store.stats()["spilled"] == 0 and os.listdir(store.spill_dir) == []
        assert store.used == 3 * slab.size_class(size)
        store.map_removed(object_id(0))
        if freed:
            assert store.used == 2 * slab.size_class(size) and store.stats()["slab_slots_used"] == 2
        else:
            assert store.ensure_local(object_id(0)) == locs[0]
    finally:
        store.clear()
    assert shm_files(prefix) == set()


def test_a_slab_is_mapped_once_and_unmapped_with_its_last_view(prefix, tmp_path):
    store = ObjectStore(prefix, 64 << 20, str(tmp_path / "spill"))
    reader = slab.SlabReader()

    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for line in f if f"{prefix}-slab" in line)

    try:
        locs = [_make(store, object_id(i), 120 * KB, i) for i in range(50)]
        views = [reader.view(loc, lambda _arg: None, None)[0] for loc in locs]
        assert mapped() == 1, "50 objects of one slab: one mapping"
        assert [bytes(v[:1]) for v in views] == [bytes([i]) for i in range(50)]
        del views
        gc.collect()
        assert mapped() == 0, "no view left: the slab is unmapped"
    finally:
        store.clear()


def test_warm_slots_give_their_memory_back_before_anything_is_spilled(prefix, tmp_path):
    size = 300 * KB  # a 320 KiB slot: 3 fit in 1000 KiB
    store = ObjectStore(prefix, 1000 * KB, str(tmp_path / "spill"))
    store.slabs.warm_limit = 1000 * KB
    try:
        for i in range(3):
            _make(store, object_id(i), size, i + 1)
        store.free(object_id(0))
        assert store.stats()["slab_warm_bytes"] == slab.size_class(size)
        _make(store, object_id(3), 250 * KB, 9)  # another class (256 KiB): room is needed
        st = store.stats()
        assert st["spilled"] == 0 and st["slab_warm_bytes"] == 0
        assert store.used == 2 * slab.size_class(size) + slab.size_class(250 * KB) <= store.capacity
    finally:
        store.clear()
    assert shm_files(prefix) == set()


def test_a_reader_keeps_one_slot_type_per_size_class(prefix, tmp_path):
    """Objects of many distinct sizes do not make a ctypes type each (a long-lived
    reader of varied sizes grew by 6 KB per size it ever saw)."""
    store = ObjectStore(prefix, 256 << 20, str(tmp_path / "spill"))
    reader = slab.SlabReader()
    try:
        sizes = [100 * KB + 37 * i for i in range(300)]
        for i, size in enumerate(sizes):
            loc = _make(store, object_id(i), size, i % 251)
            view = reader.view(loc, lambda _arg: None, None)[0]
            assert len(view) == size and bytes(view[-1:]) == bytes([i % 251])
            del view
            store.free(object_id(i))
        assert len(reader._types) <= len({slab.size_class(s) for s in sizes}) < 10
    finally:
        store.clear()


def test_slot_reads_racing_with_the_last_view_of_their_slab_going(ray_start):
    """An async actor awaits refs (read on its core worker's I/O thread) while its
    loop drops the values: a slab's mapping going away is never handed to a new
    read (the actor died of SIGSEGV, or read a closed descriptor)."""
    np = pytest.importorskip("numpy")
    ray = ray_start
    refs = [ray.put(np.full(30_000, k, dtype=np.int64)) for k in range(4)]  # 240 KB: slots of one slab

    @ray.remote
    class Reader:
        async def work(self, boxed, k, seconds):
            import asyncio
            import time

            n, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                v = await boxed[0]
                assert int(v.sum()) == 30_000 * k
                del v
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0)
            return n

    a = Reader.remote()
    counts = ray.get([a.work.remote([refs[k]], k, 3.0) for k in range(4)], timeout=60)
    assert all(c > 0 for c in counts), counts
    ray.kill(a)
    del refs


def test_values_a_driver_holds_survive_its_shutdown(request):
    """The values a driver got stay intact after ``shutdown()`` (as in Ray): the
    store's last frees must not zero or reuse the slots they view."""
    np = pytest.importorskip("numpy")
    import skate

    skate.init(num_cpus=1, object_store_memory=80 << 20)
    try:
        refs = [skate.put(np.full(50_000, i + 1, dtype=np.int32)) for i in range(100)]  # 200 KB each
        vals = skate.get(refs)
        del refs
    finally:
        skate.shutdown()
    changed = [i for i, v in enumerate(vals) if not (v == i + 1).all()]
    assert not changed, f"{len(changed)} of 100 values changed after shutdown()"


def test_values_a_disconnected_driver_holds_are_not_reused_by_the_next_job(cluster):
    """A driver that leaves a running cluster keeps its values: their slots stay
    its own until its process exits, whatever the next job puts."""
    np = pytest.importorskip("numpy")
    import subprocess
    import sys

    import skate

    skate.init(address=cluster.address)
    refs = [skate.put(np.full(50_000, i + 1, dtype=np.int32)) for i in range(50)]
    vals = skate.get(refs)
    del refs
    skate.shutdown()
    code = (
        "import numpy as np, skate\n"
        f"skate.init(address={cluster.address!r})\n"
        "keep = [skate.put(np.full(50_000, -7, dtype=np.int32)) for _ in range(100)]\n"
        "skate.get(keep)\n"
        "skate.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    changed = [i for i, v in enumerate(vals) if not (v == i + 1).all()]
    assert not changed, f"{len(changed)} of 50 values were overwritten by the next job"


def test_put_objects_read_by_tasks_while_the_store_spills_are_never_lost():
    """Under spilling, a put object some of which came back from disk as
    segments is read by tasks: none is reported lost (a segment a reader was
    told of while it was spilled stays in memory, as a slot does)."""
    np = pytest.importorskip("numpy")
    import skate

    skate.init(num_cpus=2, object_store_memory=80 << 20)
    try:
        refs = [skate.put(np.full(50_000, i, dtype=np.int32)) for i in range(600)]  # 120 MB > the store
        vals = skate.get(refs[:20])  # some come back from disk, as segments
        del vals

        @skate.remote
        def first(x):
            return int(x[0])

        assert skate.get([first.remote(r) for r in refs], timeout=120) == list(range(600))
        del refs
    finally:
        skate.shutdown()


def test_objects_restored_for_tasks_are_not_spilled_again_before_they_are_read():
    """Tasks read put objects that the store must restore from disk while other
    restores make room: a copy restored for a reader is counted as read at
    once, so it is not spilled (and its file unlinked) before the reader maps
    it (the task failed with ObjectLostError)."""
    np = pytest.importorskip("numpy")
    import skate

    skate.init(num_cpus=2, object_store_memory=50 << 20)
    try:
        refs = [skate.put(np.full(25_000 + (i % 7) * 1000, -float(i))) for i in range(600)]  # ~230 KB each

        @skate.remote
        def echo(x):
            return x  # copied out into a new object

        out = skate.get([echo.remote(refs[i]) for i in range(0, 600, 6)], timeout=120)
        assert [float(o[0]) for o in out] == [-float(i) for i in range(0, 600, 6)]
        del out, refs
    finally:
        skate.shutdown()
