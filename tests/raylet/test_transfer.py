"""Objects cross nodes in chunks: the receiving daemon's own memory stays
bounded whatever the object's size; the pull itself (windows, the node-wide
budget, failures) is tested on its own below."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import skate

pytestmark = pytest.mark.timeout(180)

MB = 1 << 20


def _rss_anon(pid: int) -> int:
    """The process's anonymous resident memory (its heap, not mapped segments), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def big_cluster():
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 1500 * MB})
    yield c
    c.shutdown()


def test_a_large_object_crosses_nodes_with_bounded_daemon_memory(big_cluster):
    cluster = big_cluster
    cluster.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=1500 * MB)
    skate.init(address=cluster.address)
    head_pid = cluster.head_node._proc.proc.pid

    @skate.remote(resources={"far": 1})
    def make() -> np.ndarray:
        return np.full(600 * MB // 8, 3.0)

    ref = make.remote()
    skate.wait([ref])
    base = _rss_anon(head_pid)
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon(head_pid))
            stop.wait(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        value = skate.get(ref, timeout=120)  # pulled to the head's store, then mapped here
    finally:
        stop.set()
        t.join()
    assert value.shape == (600 * MB // 8,) and value[0] == 3.0 and value[-1] == 3.0
    grew = peak[0] - base
    assert grew < 150 * MB, f"the receiving daemon grew by {grew / MB:.0f} MB for a 600 MB object"
    del value, ref


# --- the pull on its own (no cluster): windows, budget, failures ------------------------
def _pull(tmp_path, data: bytes, chunk: int, window: int, budget=None, fail_at=None, state=None):
    import asyncio
    import random

    from skate._private.raylet import transfer

    path = str(tmp_path / "seg")
    state = state if state is not None else {}
    state.update(inflight=0, peak=0, abandoned=False, offsets=[])

    async def fetch(offset: int):
        state["inflight"] += 1
        state["peak"] = max(state["peak"], state["inflight"])
        try:
            await asyncio.sleep(random.random() / 1000)  # replies come back in any order
            if fail_at is not None and offset >= fail_at:
                raise KeyError("gone")
            state["offsets"].append(offset)
            return len(data), data[offset : offset + chunk]
        finally:
            state["inflight"] -= 1

    async def reserve(size: int) -> str:
        assert size == len(data)
        return path

    def abandon() -> None:
        state["abandoned"] = True

    got = asyncio.run(transfer.pull(b"x" * 20, fetch, reserve, abandon, budget or transfer.ChunkBudget(64),
                                    chunk=chunk, window=window))
    return got, state


def test_a_pull_writes_every_chunk_at_its_offset_with_a_bounded_window(tmp_path):
    import os

    data = os.urandom(100_000 + 7)
    path, state = _pull(tmp_path, data, chunk=4096, window=3)
    with open(path, "rb") as f:
        assert f.read() == data
    assert sorted(state["offsets"]) == list(range(0, len(data), 4096))
    assert state["peak"] <= 3 and not state["abandoned"]


def test_the_node_wide_budget_bounds_chunks_in_flight(tmp_path):
    import os

    from skate._private.raylet import transfer

    data = os.urandom(50_000)
    _, state = _pull(tmp_path, data, chunk=1000, window=8, budget=transfer.ChunkBudget(2))
    assert state["peak"] <= 2


def test_a_pull_that_fails_midway_frees_its_reservation(tmp_path):
    import os

    data = os.urandom(50_000)
    state: dict = {}
    with pytest.raises(KeyError):
        _pull(tmp_path, data, chunk=1000, window=4, fail_at=20_000, state=state)
    assert state["abandoned"] and state["peak"] <= 4
