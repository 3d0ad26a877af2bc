"""Objects end to end: put/get, shared memory, spilling, freeing, serialization
errors, refs inside values, and how task errors reach the caller."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
from conftest import pid_gone, wait_for, wait_printed

import skate
from skate import exceptions as exc
from skate._private import runtime

# Workers cannot import this test module: ship its helpers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MB = 1024 * 1024


def _segments() -> set[str]:
    """This cluster's shared-memory segments (other clusters may share /dev/shm)."""
    prefix = runtime.current().store_prefix + "-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def _segment_of(ref) -> str:
    return f"{runtime.current().store_prefix}-{ref.hex()}"


# --- put / get -------------------------------------------------------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


VALUES = [
    0,
    -12345678901234567890,
    3.5,
    float("inf"),
    "text",
    "ünïcødé",
    b"\x00bytes",
    None,
    True,
    [1, [2, [3]]],
    (1, "a", None),
    {"a": 1, 2: [3], (4, 5): {"x": None}},
    {1, 2, 3},
    frozenset({"a"}),
    b"x" * (2 * MB),  # large: shared memory
    "y" * (200 * 1024),
]


def test_put_get_roundtrip(ray_start):
    for value in VALUES:
        assert skate.get(skate.put(value)) == value
    assert skate.get([skate.put(v) for v in VALUES]) == VALUES
    assert skate.get(skate.put(Point(1, 2))) == Point(1, 2)
    f = skate.get(skate.put(lambda x: x * 2))
    assert f(21) == 42
    e = skate.get(skate.put(ValueError("stored, not raised")))
    assert isinstance(e, ValueError) and str(e) == "stored, not raised"
    with pytest.raises(TypeError):
        skate.put(skate.put(1))


def test_numpy_get_is_read_only_and_zero_copy(ray_start):
    arr = np.arange(1_000_000, dtype=np.int64)  # 8 MB: goes to shared memory
    ref = skate.put(arr)
    out = skate.get(ref)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable
    assert not out.flags.owndata  # a view on the mapped segment, not a copy
    assert out.ctypes.data % 64 == 0  # buffers are aligned in the segment
    with pytest.raises(ValueError):
        out[0] = 1
    small = skate.get(skate.put(np.arange(10)))
    np.testing.assert_array_equal(small, np.arange(10))
    # Other dtypes and shapes.
    values = [
        np.zeros((3, 4), dtype=np.float32),
        np.arange(12, dtype=np.uint8).reshape(3, 4).T,  # not contiguous
        np.array([1 + 2j, 3 - 4j]),
        np.array(["a", "bc"]),
        np.ones((0, 5)),
        np.random.default_rng(0).random((256, 256)),
    ]
    for v in values:
        out = skate.get(skate.put(v))
        assert out.dtype == v.dtype and out.shape == v.shape
        np.testing.assert_array_equal(out, v)


def test_large_arrays_in_and_out_of_tasks(ray_start):
    @skate.remote
    def checksum(a):
        return float(a.sum()), a.shape, bool(a.flags.writeable)

    @skate.remote
    def make(n, fill):
        return np.full(n, fill, dtype=np.float64)

    big = np.ones(20 * MB // 8)
    # By value (a large argument) and by reference.
    s, shape, writeable = skate.get(checksum.remote(big))
    assert s == big.size and shape == big.shape and not writeable
    ref = skate.put(big)
    assert skate.get(checksum.remote(ref))[0] == big.size
    out = skate.get(make.remote(20 * MB // 8, 2.0))
    assert out.shape == (20 * MB // 8,) and float(out[0]) == 2.0 and float(out[-1]) == 2.0
    # A task's large return passed straight to another task.
    assert skate.get(checksum.remote(make.remote(1000_000, 3.0)))[0] == 3_000_000.0


# --- the object store: spilling, limits, freeing ----------------------------------------


def test_spilling_beyond_the_store(tmp_path):
    skate.init(num_cpus=1, object_store_memory=50 * MB)
    try:
        n = 20 * MB // 8
        refs = [skate.put(np.full(n, i, dtype=np.float64)) for i in range(6)]  # 120 MB, kept alive
        for i, ref in enumerate(refs):
            arr = skate.get(ref)
            assert arr.shape == (n,)
            assert float(arr[0]) == i and float(arr[-1]) == i
            del arr
        # Once more in reverse (everything spilled is restored again).
        for i, ref in reversed(list(enumerate(refs))):
            assert float(skate.get(ref)[n // 2]) == i

        @skate.remote
        def first(a):
            return float(a[0])

        assert skate.get([first.remote(r) for r in refs]) == [float(i) for i in range(6)]
    finally:
        skate.shutdown()


def test_object_larger_than_the_store_goes_to_a_disk_backed_segment():
    skate.init(num_cpus=1, object_store_memory=50 * MB)
    try:
        core = runtime.current()

        def store() -> dict:
            return core.request(core.raylet, "node_stats")["store"]

        ref = skate.put(np.arange(60 * MB, dtype=np.uint8))
        st = store()
        assert st["disk_backed"] == 1 and st["disk_backed_bytes"] >= 60 * MB
        assert st["used"] < 50 * MB  # not in the memory store
        value = skate.get(ref)
        assert value.shape == (60 * MB,) and value[-1] == (60 * MB - 1) % 256
        # The store still works alongside it.
        assert skate.get(skate.put(np.ones(10))).sum() == 10

        @skate.remote
        def too_big():
            return np.full(60 * MB, 3, dtype=np.uint8)

        @skate.remote
        def total(a):
            return int(a[:1000].sum()) + a.nbytes

        assert skate.get(total.remote(too_big.remote())) == 3000 + 60 * MB
        del value, ref
        # Freed with their objects (once the readers' mappings are gone too).
        wait_for(lambda: store()["disk_backed_bytes"] == 0, 10, what="the disk-backed segments to be freed")
        assert store()["disk_backed"] == 0
        spill = os.path.join(core.session_dir, "spill")
        assert not [f for _, _, fs in os.walk(spill) for f in fs if f.endswith(".seg")]
    finally:
        skate.shutdown()


def test_a_put_that_no_spilling_can_make_room_for_goes_to_disk():
    skate.init(num_cpus=1, object_store_memory=100 * MB)
    try:
        core = runtime.current()

        def store() -> dict:
            return core.request(core.raylet, "node_stats")["store"]

        a = skate.put(np.full(60 * MB, 1, dtype=np.uint8))
        held = skate.get(a)  # mapped by this reader: it cannot be spilled
        b = skate.put(np.full(60 * MB, 2, dtype=np.uint8))  # waits a little, then a disk-backed segment
        st = store()
        assert st["disk_backed"] == 1 and st["spilled"] == 0
        assert held[-1] == 1 and skate.get(b)[-1] == 2
        del held, a, b
        wait_for(lambda: store()["disk_backed_bytes"] == 0, 10, what="the disk-backed segment to be freed")
    finally:
        skate.shutdown()


def _segment_bytes() -> int:
    prefix = runtime.current().store_prefix + "-"
    total = 0
    for n in os.listdir("/dev/shm"):
        if n.startswith(prefix):
            try:
                total += os.stat(os.path.join("/dev/shm", n)).st_size
            except FileNotFoundError:
                pass
    return total


def test_memory_does_not_grow_when_objects_are_dropped(ray_start):
    size = 2 * MB
    # The store may keep a few freed segments around for reuse, but a loop
    # that puts and drops objects must not accumulate them.
    bound = 4 * size
    for i in range(30):
        ref = skate.put(np.full(size, i, dtype=np.uint8))
        assert int(skate.get(ref)[0]) == i
        name = _segment_of(ref)
        del ref
        assert len(_segments()) <= 8
    wait_for(lambda: name not in _segments(), 10, what="the last dropped object's segment to go")
    wait_for(lambda: _segment_bytes() <= bound, 10, what="dropped objects' memory to be released")
    wait_for(lambda: len(_segments()) <= 3, 10, what="dropped objects' segments to go")

    @skate.remote
    def make(i):
        return np.full(size, i, dtype=np.uint8)

    for i in range(10):
        assert int(skate.get(make.remote(i))[-1]) == i
        assert len(_segments()) <= 8
    gc.collect()
    wait_for(lambda: _segment_bytes() <= bound, 10, what="dropped task results' memory to be released")


def _pinned() -> int:
    """Objects some process maps now, as the local node daemon counts them."""
    core = runtime.current()
    return core.request(core.raylet, "node_stats")["store"]["pinned"]


def test_get_of_many_shared_memory_objects(ray_start):
    refs = [skate.put(np.full(200 * 1024, i, dtype=np.uint8)) for i in range(50)]
    vals = skate.get(refs + refs[:3])  # one obj_get_many for all of them, duplicates included
    assert [int(v[0]) for v in vals] == list(range(50)) + [0, 1, 2]
    assert _pinned() == 50  # each mapped object counted, until its values are dropped
    del vals
    gc.collect()
    wait_for(lambda: _pinned() == 0, 10, what="the mappings to be released")

    # One of them gone from the store: that one raises, and the mappings the
    # batch counted for the others are released all the same.
    core = runtime.current()
    core.raylet.notify("obj_free", [refs[7]._id])
    wait_for(lambda: _segment_of(refs[7]) not in _segments(), 10, what="the segment to be freed")
    with pytest.raises(exc.ObjectLostError):
        skate.get(refs)
    gc.collect()
    wait_for(lambda: _pinned() == 0, 10, what="the mappings of a failed get to be released")


def test_segment_freed_when_last_ref_dropped(ray_start):
    ref = skate.put(np.zeros(2 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    assert name in _segments()
    copy = ref
    del ref
    gc.collect()
    assert name in _segments()  # still referenced by ``copy``
    del copy
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed")

    # An object whose only ref is inside another object lives as long as that one.
    inner = skate.put(np.arange(MB // 8))
    name = _segment_of(inner)
    outer = skate.put({"inner": inner})
    del inner
    gc.collect()
    got = skate.get(outer)["inner"]
    np.testing.assert_array_equal(skate.get(got), np.arange(MB // 8))
    del got, outer
    gc.collect()
    wait_for(lambda: name not in _segments(), 10, what="the contained object to be freed")


def test_borrowed_object_kept_until_borrower_drops_it(ray_start):
    @skate.remote
    class Holder:
        def __init__(self):
            self.refs = None

        def hold(self, refs):
            self.refs = refs  # a list: the ref inside is not resolved
            return True

        def read(self):
            return int(skate.get(self.refs[0]).sum())

        def drop(self):
            self.refs = None
            gc.collect()
            return True

    holder = Holder.remote()
    ref = skate.put(np.ones(3 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    assert skate.get(holder.hold.remote([ref]))
    del ref
    gc.collect()
    # The driver dropped its ref but the actor still borrows it.
    assert skate.get(holder.read.remote()) == 3 * MB
    assert name in _segments()
    assert skate.get(holder.drop.remote())
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed after the borrower dropped it")


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_an_argument_kept_by_an_async_or_threaded_actor_stays_borrowed(ray_start, kind):
    """A ref in a call's arguments is announced to its owner only at the reply,
    and only if still referenced then: kept in the actor's state, it is."""

    @skate.remote
    class AsyncHolder:
        async def hold(self, refs):
            self.refs = refs
            return True

        async def read(self):
            return int((await self.refs[0]).sum())

    @skate.remote(max_concurrency=2)
    class ThreadedHolder:
        def hold(self, refs):
            self.refs = refs
            return True

        def read(self):
            return int(skate.get(self.refs[0]).sum())

    holder = (AsyncHolder if kind == "async" else ThreadedHolder).remote()
    ref = skate.put(np.ones(3 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    assert skate.get(holder.hold.remote([ref]))
    del ref
    gc.collect()
    assert skate.get(holder.read.remote()) == 3 * MB
    assert name in _segments()
    skate.kill(holder)
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed after the borrower died")


@skate.remote
def _sum_once_open(refs, gate):
    """The sum of the array ``refs[0]`` refers to, once the file ``gate`` exists."""
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return int(skate.get(refs[0]).sum())


def test_refs_passed_on_by_a_task_outlive_it(ray_start, tmp_path):
    """A task hands the ref in its arguments to a task it does not wait for, and
    returns it inside its value: both keep it alive after the task replied
    and the driver dropped its own ref."""
    gate = str(tmp_path / "gate")

    @skate.remote
    def pass_on(refs, gate):
        return [_sum_once_open.remote(refs, gate), refs]

    ref = skate.put(np.ones(2 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    sub, returned = skate.get(pass_on.remote([ref], gate))
    del ref
    gc.collect()
    assert name in _segments()
    assert int(skate.get(returned[0]).sum()) == 2 * MB
    open(gate, "w").close()
    assert skate.get(sub) == 2 * MB
    del sub, returned
    gc.collect()
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed once nothing holds it")


def test_a_burst_of_borrowed_refs_is_announced_and_released(ray_start):
    """10,000 refs owned by a worker arrive in one get (their borrows reach the
    I/O thread as one batch): each stays readable once the object that held
    them is gone, and dropping them releases them all (checked after the test)."""

    @skate.remote
    class Owner:
        def make(self, n):
            return [skate.put(i) for i in range(n)]

    owner = Owner.remote()
    outer = owner.make.remote(10_000)
    refs = skate.get(outer)
    del outer
    gc.collect()
    assert skate.get([refs[0], refs[4_321], refs[-1]]) == [0, 4_321, 9_999]
    assert sum(skate.get(refs)) == sum(range(10_000))
    del refs
    gc.collect()


def test_a_release_racing_a_decode_of_the_same_ref_keeps_the_second_borrow(ray_start, tmp_path):
    """Two threads of a threaded actor: one drops argument ref X while the other
    decodes X and keeps it. The drop's notice is delayed (instrumented: the
    window a thread switch opens) until the keeper has started; the keeper's
    borrow must still reach the owner, so X outlives the driver's ref."""
    releasing, kept, released = (str(tmp_path / n) for n in ("releasing", "kept", "released"))

    @skate.remote(max_concurrency=2)
    class A:
        def __init__(self):
            from skate._private import runtime

            store = runtime.current().store
            real = store.on_borrow_change

            def delayed(oid, owner, delta):
                if delta < 0 and threading.current_thread().name.startswith("actor") and not os.path.exists(released):
                    open(releasing, "w").close()
                    deadline = time.monotonic() + 2  # (the keeper may be unable to start until this returns)
                    while not os.path.exists(kept) and time.monotonic() < deadline:
                        time.sleep(0.005)
                    real(oid, owner, delta)
                    open(released, "w").close()
                    return
                real(oid, owner, delta)

            store.on_borrow_change = delayed
            self.x = None

        def touch(self, box):
            return len(box)  # box[0] is dropped as the call ends

        def keep(self, box):
            self.x = box[0]
            open(kept, "w").close()
            deadline = time.monotonic() + 10
            while not os.path.exists(released) and time.monotonic() < deadline:  # reply after the drop's notice
                time.sleep(0.005)
            return True

        def read(self):
            return len(skate.get(self.x, timeout=10))

    a = A.remote()
    skate.get(a.__ray_ready__.remote(), timeout=30)
    x = skate.put(b"x" * 200_000)
    touched = a.touch.remote([x])
    wait_for(lambda: os.path.exists(releasing), 30, what="the first call to drop its ref")
    keeping = a.keep.remote([x])
    assert skate.get([touched, keeping], timeout=30) == [1, True]
    del x, touched, keeping
    gc.collect()
    assert skate.get(a.read.remote(), timeout=30) == 200_000


def test_object_freed_when_borrowing_actor_dies(ray_start):
    @skate.remote
    class Holder:
        def hold(self, refs):
            self.refs = refs
            return True

    holder = Holder.remote()
    ref = skate.put(np.ones(3 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    assert skate.get(holder.hold.remote([ref]))
    del ref
    gc.collect()
    assert name in _segments()
    # The borrower dies without giving the ref back: the owner must notice.
    skate.kill(holder)
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed after the borrower died")


def test_borrowed_by_a_running_task(ray_start, tmp_path):
    gate = str(tmp_path / "gate")
    ref = skate.put(np.ones(2 * MB, dtype=np.uint8))
    name = _segment_of(ref)
    out = _sum_once_open.remote([ref], gate)
    del ref
    gc.collect()
    assert name in _segments()
    open(gate, "w").close()
    assert skate.get(out) == 2 * MB
    wait_for(lambda: name not in _segments(), 10, what="the segment to be freed after the task ended")


# --- serialization errors ------------------------------------------------------------------


def test_serialization_errors_name_the_culprit(ray_start):
    @skate.remote
    def f(*args, **kwargs):
        return 1

    @skate.remote
    def returns_lock():
        return threading.Lock()

    lk = threading.Lock()

    @skate.remote
    def uses_lock():
        return lk.locked()

    # put() of a value holding a lock.
    with pytest.raises(TypeError) as info:
        skate.put({"fine": 1, "lock": threading.Lock()})
    assert "lock" in str(info.value)
    assert "put" in str(info.value)
    # Task arguments: the error names which one.
    with pytest.raises(TypeError, match="argument 1"):
        f.remote(1, threading.Lock())
    with pytest.raises(TypeError, match="'lk'"):
        f.remote(1, lk=threading.Lock())
    # A function capturing a lock: the error names the variable.
    with pytest.raises(TypeError, match="lk"):
        uses_lock.remote()
    # A return value that cannot be sent back.
    with pytest.raises(exc.RayTaskError) as info:
        skate.get(returns_lock.remote())
    assert isinstance(info.value, TypeError)
    assert "return value" in str(info.value)
    # The worker survives all of it.
    assert skate.get(f.remote(1)) == 1


# --- refs inside values --------------------------------------------------------------------


def test_nested_refs_are_not_resolved(ray_start):
    @skate.remote
    def inspect_arg(x):
        return [type(r).__name__ for r in x["refs"]], skate.get(x["refs"])

    a, b = skate.put(1), skate.put("two")
    kinds, values = skate.get(inspect_arg.remote({"refs": [a, b]}))
    assert kinds == ["ObjectRef", "ObjectRef"]
    assert values == [1, "two"]

    @skate.remote
    def in_list(lst):
        return isinstance(lst[0], skate.ObjectRef), skate.get(lst[0])

    assert skate.get(in_list.remote([a])) == (True, 1)

    # Refs of pending task results inside a list.
    @skate.remote
    def make(x):
        return x * 10

    @skate.remote
    def total(refs):
        return sum(skate.get(refs))

    assert skate.get(total.remote([make.remote(i) for i in range(5)])) == 100


def test_task_returns_refs_it_put(ray_start):
    @skate.remote
    def producer():
        return [skate.put("small"), skate.put(np.full(MB, 7, dtype=np.uint8))]

    refs = skate.get(producer.remote())
    assert all(isinstance(r, skate.ObjectRef) for r in refs)
    # The task is over; the values live on.
    small, big = skate.get(refs)
    assert small == "small"
    assert big.shape == (MB,) and int(big[0]) == 7

    @skate.remote
    def consume(refs):
        return skate.get(refs[0]) + str(int(skate.get(refs[1])[-1]))

    assert skate.get(consume.remote(refs)) == "small7"

    # A task returning the ref of a task it submitted.
    @skate.remote
    def inner():
        return "inner value"

    @skate.remote
    def outer():
        return inner.remote()

    ref = skate.get(outer.remote())
    assert isinstance(ref, skate.ObjectRef)
    assert skate.get(ref) == "inner value"


def test_owner_died(ray_start):
    @skate.remote(max_calls=1)  # the worker exits after this task
    def producer():
        return os.getpid(), [skate.put("small"), skate.put(np.ones(MB, dtype=np.uint8))]

    pid, refs = skate.get(producer.remote())
    wait_for(lambda: pid_gone(pid),
             20, what="the owning worker to exit")
    for ref in refs:
        with pytest.raises(exc.OwnerDiedError) as info:
            skate.get(ref, timeout=30)
        assert isinstance(info.value, exc.ObjectLostError)
        assert ref.hex() in str(info.value)


# --- errors -----------------------------------------------------------------------------------


class MyError(Exception):
    pass


class CodedError(Exception):
    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


def test_task_exception_is_both_classes(ray_start):
    @skate.remote
    def raiser():
        raise MyError("custom failure")

    with pytest.raises(MyError) as info:
        skate.get(raiser.remote())
    err = info.value
    assert isinstance(err, exc.RayTaskError)
    assert isinstance(err, MyError)
    text = str(err)
    assert "custom failure" in text
    assert "Traceback" in text
    assert "raiser" in text

    with pytest.raises(exc.RayTaskError):
        skate.get(raiser.remote())

    @skate.remote
    def inner():
        raise KeyError("deep")

    @skate.remote
    def outer():
        return skate.get(inner.remote())

    with pytest.raises(KeyError) as info:
        skate.get(outer.remote())
    assert "deep" in str(info.value)

    @skate.remote
    def coded():
        raise CodedError("with a code", 42)

    @skate.remote
    def missing():
        return open("/nonexistent/skate/file")

    with pytest.raises(CodedError) as info:
        skate.get(coded.remote())
    assert info.value.code == 42
    assert isinstance(info.value.cause, CodedError)
    with pytest.raises(FileNotFoundError) as info2:
        skate.get(missing.remote())
    assert info2.value.cause.errno == 2


def test_dependent_task_gets_upstream_error(ray_start, tmp_path):
    marker = tmp_path / "ran"

    @skate.remote
    def upstream():
        raise ValueError("upstream broke")

    @skate.remote
    def downstream(x, path):
        with open(path, "w") as f:
            f.write("ran")
        return x

    with pytest.raises(ValueError, match="upstream broke") as info:
        skate.get(downstream.remote(upstream.remote(), str(marker)))
    assert isinstance(info.value, exc.RayTaskError)
    assert not marker.exists()  # downstream never ran


def test_unhandled_error_printed_when_dropped(ray_start, capfd):
    @skate.remote
    def fails():
        raise ValueError("nobody looked at me")

    ref = fails.remote()
    skate.wait([ref], timeout=30)
    del ref
    gc.collect()
    _, err = wait_printed(capfd, "nobody looked at me", 10)
    skate.shutdown()
    text = err + capfd.readouterr().err
    assert "Unhandled error" in text
    assert text.count("Unhandled error") == 1  # printed once


def test_retrieved_error_is_not_reported(ray_start, capfd):
    @skate.remote
    def fails():
        raise ValueError("already seen")

    @skate.remote
    def ok():
        return 1

    ref = fails.remote()
    with pytest.raises(ValueError):
        skate.get(ref)
    del ref
    gc.collect()
    # Flush the driver's pending frees with a round trip, then check.
    assert skate.get(ok.remote()) == 1
    skate.shutdown()
    assert "Unhandled error" not in capfd.readouterr().err
