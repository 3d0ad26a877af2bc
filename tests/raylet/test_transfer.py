"""Objects cross nodes in chunks: the receiving daemon's own memory stays
bounded whatever the object's size."""

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
