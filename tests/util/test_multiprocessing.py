"""skate.util.multiprocessing.Pool on real clusters: actors as pool processes."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
from multiprocessing.pool import RemoteTraceback

import pytest
from conftest import pid_gone, wait_for

import skate
from skate import exceptions as exc
from skate.util.multiprocessing import Pool, TimeoutError


@skate.remote
class Gate:
    """Holds callers until ``open`` is called."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self) -> bool:
        await self.event.wait()
        return True

    def open(self) -> None:
        self.event.set()


def square(x: int) -> int:
    return x * x


def pid(_: object = None) -> int:
    return os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed ({x})")
    return x


def wait_gate(gate, value):
    skate.get(gate.wait.remote())
    return value


def set_marker(value: str) -> None:
    os.environ["SKATE_POOL_MARKER"] = value


def read_marker(_: object = None) -> str | None:
    return os.environ.get("SKATE_POOL_MARKER")


def pool_pids(pool: Pool, n: int) -> set:
    return set(pool.map(pid, range(n), chunksize=1))


# --- construction --------------------------------------------------------------------------


def test_processes_default_to_cluster_cpus(ray_start):
    with Pool() as pool:
        pids = pool_pids(pool, 8)
        assert len(pids) == 2 and os.getpid() not in pids


def test_process_count_is_checked(ray_start):
    with pytest.raises(ValueError, match="only 2 CPUs"):
        Pool(3)
    with pytest.raises(ValueError, match=">0"):
        Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="callable"):
        Pool(1, initializer=42)


def test_pool_starts_a_local_cluster_when_not_connected():
    assert not skate.is_initialized()
    pool = Pool(1)
    assert skate.is_initialized()
    assert skate.cluster_resources()["CPU"] == 1
    assert pool.map(square, [1, 2, 3]) == [1, 4, 9]
    pool.terminate()


def test_ray_address_joins_a_running_cluster(cluster):
    cluster.add_node(num_cpus=1)
    assert not skate.is_initialized()
    pool = Pool(2, ray_address=cluster.address)
    assert skate.is_initialized()
    assert len(skate.nodes()) == 2
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    pool.terminate()


def test_context_is_ignored_with_a_warning(ray_start):
    with pytest.warns(UserWarning, match="context"):
        pool = Pool(1, context=multiprocessing.get_context("spawn"))
    assert pool.apply(square, (4,)) == 16
    pool.terminate()


def test_initializer_runs_in_every_process(ray_start):
    with Pool(2, initializer=set_marker, initargs=("ready",)) as pool:
        assert pool.map(read_marker, range(6), chunksize=1) == ["ready"] * 6


def test_maxtasksperchild_replaces_processes(ray_start):
    with Pool(1, maxtasksperchild=2, initializer=set_marker, initargs=("fresh",)) as pool:
        pids = [pool.apply(pid) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert pool.apply(read_marker) == "fresh"  # the replacement ran the initializer too


def test_ray_remote_args_configure_the_actors(ray_start):
    with Pool(2, ray_remote_args={"num_cpus": 1}) as pool:
        assert pool.apply(square, (3,)) == 9
        wait_for(lambda: skate.available_resources().get("CPU", 0) == 0, 15, what="the actors to hold the CPUs")
    with pytest.raises(ValueError, match="Invalid option"):
        Pool(1, ray_remote_args={"bogus": True})


# --- apply ---------------------------------------------------------------------------------


def test_apply_with_args_and_kwargs(ray_start):
    with Pool(2) as pool:
        assert pool.apply(square, (5,)) == 25
        assert pool.apply(int, ("ff",), {"base": 16}) == 255
        assert pool.apply(int, ("ff",), kwds={"base": 16}) == 255
        with pytest.raises(ValueError, match="three"):
            pool.apply(fail_on_three, (3,))


def test_apply_async_result(ray_start):
    gate = Gate.remote()
    with Pool(2) as pool:
        res = pool.apply_async(wait_gate, (gate, "done"))
        assert not res.ready()
        with pytest.raises(ValueError, match="not ready"):
            res.successful()
        res.wait(0.2)
        assert not res.ready()
        with pytest.raises(TimeoutError):
            res.get(timeout=0.2)
        assert TimeoutError is multiprocessing.TimeoutError
        gate.open.remote()
        assert res.get(timeout=30) == "done"
        assert res.ready() and res.successful()


def test_apply_async_callbacks(ray_start):
    got: list = []
    errors: list = []
    called = threading.Event()

    def on_value(v):
        got.append(v)
        called.set()

    def on_error(e):
        errors.append(e)
        called.set()

    with Pool(2) as pool:
        res = pool.apply_async(square, (6,), callback=on_value, error_callback=on_error)
        res.wait(30)
        assert res.ready() and got == [36] and errors == []
        called.clear()
        bad = pool.apply_async(fail_on_three, (3,), callback=on_value, error_callback=on_error)
        bad.wait(30)
        assert called.is_set() and got == [36]
        assert isinstance(errors[0], ValueError) and not bad.successful()
        with pytest.raises(ValueError, match="three") as info:
            bad.get()
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fail_on_three" in str(info.value.__cause__)


# --- map / starmap -------------------------------------------------------------------------


def test_map_keeps_order_and_spreads_work(ray_start):
    with Pool(2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, []) == []
        assert len(pool_pids(pool, 6)) == 2


def test_map_chunksize_batches_calls(ray_start):
    with Pool(2) as pool:
        assert len(set(pool.map(pid, range(6), chunksize=6))) == 1  # one batch, one actor
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)


def test_map_raises_the_first_error(ray_start):
    with Pool(2) as pool:
        with pytest.raises(ValueError, match="three"):
            pool.map(fail_on_three, range(6))
        assert pool.map(fail_on_three, [1, 2]) == [1, 2]  # the pool is still usable


def test_map_async_callbacks(ray_start):
    got: list = []
    errors: list = []
    with Pool(2) as pool:
        res = pool.map_async(square, range(5), callback=got.append, error_callback=errors.append)
        assert res.get(timeout=30) == [0, 1, 4, 9, 16]
        res.wait()
        assert got == [[0, 1, 4, 9, 16]] and errors == []
        bad = pool.map_async(fail_on_three, range(6), callback=got.append, error_callback=errors.append)
        bad.wait(30)
        assert bad.ready() and not bad.successful()
        assert len(got) == 1 and len(errors) == 1 and isinstance(errors[0], ValueError)


def test_starmap_and_starmap_async(ray_start):
    with Pool(2) as pool:
        assert pool.starmap(pow, [(2, 3), (3, 2), (5, 0)]) == [8, 9, 1]
        got: list = []
        res = pool.starmap_async(pow, [(2, 2), (2, 4)], callback=got.append)
        assert res.get(timeout=30) == [4, 16]
        res.wait()
        assert got == [[4, 16]]
        assert pool.starmap_async(pow, [(2, 1)] * 5, chunksize=2).get(timeout=30) == [2] * 5


# --- imap ----------------------------------------------------------------------------------


def test_imap_is_ordered_and_lazy(ray_start):
    with Pool(2) as pool:
        assert list(pool.imap(square, range(7))) == [x * x for x in range(7)]
        assert list(pool.imap(square, range(7), chunksize=3)) == [x * x for x in range(7)]
        endless = pool.imap(square, itertools.count())  # arguments are read as needed
        assert [next(endless) for _ in range(5)] == [0, 1, 4, 9, 16]


def test_imap_next_timeout_and_unordered(ray_start):
    gate = Gate.remote()
    with Pool(2) as pool:
        ordered = pool.imap(gated_or_now, [(gate, True)])
        with pytest.raises(TimeoutError):
            ordered.next(timeout=0.2)
        args = [(gate, "slow")] + [(None, k) for k in range(3)]
        unordered = pool.imap_unordered(gated_or_now, args)
        assert [next(unordered) for _ in range(3)] == [0, 1, 2]  # the slow one comes last
        gate.open.remote()
        assert list(unordered) == ["slow"]
        assert ordered.next(timeout=30) is True
        with pytest.raises(StopIteration):
            next(ordered)


def gated_or_now(pair):
    gate, value = pair
    if gate is not None:
        skate.get(gate.wait.remote())
    return value


def test_imap_raises_at_the_failing_item_and_goes_on(ray_start):
    with Pool(2) as pool:
        it = pool.imap(fail_on_three, range(5))
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(it)
        assert list(it) == [4]


# --- lifetime ------------------------------------------------------------------------------


def test_close_lets_queued_work_finish_then_join(ray_start):
    pool = Pool(2)
    pids = pool_pids(pool, 4)
    res = pool.map_async(square, range(10))
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(square, [1])
    pool.join()
    assert res.get(timeout=30) == [x * x for x in range(10)]
    wait_for(lambda: all(pid_gone(p) for p in pids), 15, what="the pool's actors to exit")


def test_join_needs_close(ray_start):
    pool = Pool(1)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.terminate()
    pool.join()


def test_terminate_stops_running_work(ray_start):
    gate = Gate.remote()
    pool = Pool(2)
    pids = pool_pids(pool, 4)
    res = pool.apply_async(wait_gate, (gate, 1))
    pool.terminate()
    with pytest.raises(exc.RayError):
        res.get(timeout=30)
    wait_for(lambda: all(pid_gone(p) for p in pids), 15, what="the pool's actors to be killed")


def test_context_manager_terminates(ray_start):
    with Pool(2) as pool:
        pids = pool_pids(pool, 4)
    wait_for(lambda: all(pid_gone(p) for p in pids), 15, what="the pool's actors to be killed")
    with pytest.raises(ValueError, match="Pool not running"):
        with pool:
            pass
