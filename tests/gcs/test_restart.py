"""A control store with its tables in Redis survives SIGKILL: the cluster keeps running.

Real processes and a real redis-server: the head's supervisor starts a new
control store on the same socket; node daemons, workers and drivers ride
out the outage, reconnect and register again.
"""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest
from conftest import gcs_server_pid, pid_gone, wait_for, wait_printed

import skate
from skate._private import node, runtime
from skate._private.config import CONFIG
from skate.cluster_utils import Cluster

pytestmark = pytest.mark.timeout(120)


def _kill_control_store(c: Cluster) -> int:
    """SIGKILLs the running control store; returns once a new one runs."""
    old = gcs_server_pid(c)
    assert old
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gcs_server_pid(c) not in (0, old), 15, what="a new control store")
    return old


def _node_pids(c: Cluster) -> list[int]:
    return [n._proc.proc.pid for n in c.list_all_nodes()]


@pytest.fixture
def redis_cluster(redis_url):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "gcs_storage": redis_url})
    c.add_node(num_cpus=1, resources={"other": 2})
    yield c
    c.shutdown()


@skate.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n

    def slow(self, gate: str) -> str:
        import time

        while not os.path.exists(gate):
            time.sleep(0.01)
        return "done"

    def pid(self) -> int:
        return os.getpid()


def test_cluster_keeps_running_through_a_control_store_sigkill(redis_cluster, tmp_path):
    c = redis_cluster
    skate.init(address=c.address)
    daemons = _node_pids(c)
    named = Counter.options(name="svc", namespace="ns1").remote()
    detached = Counter.options(name="keeper", lifetime="detached").remote()
    plain = Counter.options(resources={"other": 1}).remote()
    assert skate.get([named.inc.remote(), detached.inc.remote(), plain.inc.remote()]) == [1, 1, 1]
    actor_pids = skate.get([named.pid.remote(), detached.pid.remote(), plain.pid.remote()])
    core = runtime.current_or_none()
    core.gcs_call("kv_put", ["ns1", "k", True], [b"v"])
    gate = str(tmp_path / "gate")
    in_flight = plain.slow.remote(gate)  # a call in flight while the control store dies

    _kill_control_store(c)

    # Nothing else died: node daemons and actor processes are the same processes.
    assert all(psutil.pid_exists(p) and not pid_gone(p) for p in daemons + actor_pids)
    open(gate, "w").close()
    assert skate.get(in_flight, timeout=30) == "done"
    # Actor state, names, detached actors and KV survived.
    assert skate.get([named.inc.remote(), detached.inc.remote(), plain.inc.remote()]) == [2, 2, 2]
    assert skate.get(skate.get_actor("svc", namespace="ns1").inc.remote()) == 3
    assert skate.get(skate.get_actor("keeper").inc.remote()) == 3
    assert core.gcs_call("kv_get", ["ns1", "k"]) == (True, [b"v"])
    # Both nodes registered again; new work and new actors run on both.
    wait_for(lambda: sum(n["Alive"] for n in skate.nodes()) == 2, 15, what="both nodes alive")

    @skate.remote
    def where() -> str:
        return skate.get_runtime_context().get_node_id()

    assert skate.get(where.options(resources={"other": 1}).remote()) != skate.get(where.remote())
    fresh = Counter.options(name="fresh").remote()
    assert skate.get(skate.get_actor("fresh").inc.remote()) == 1
    skate.kill(fresh)
    skate.kill(detached)


def test_logs_reach_the_driver_after_a_restart(redis_cluster, capfd):
    skate.init(address=redis_cluster.address)

    @skate.remote
    def say(word: str) -> None:
        print(word)

    skate.get(say.remote("before-restart"))
    wait_printed(capfd, "before-restart")
    client = runtime.current().gcs_fut.result()
    before = client.reconnects
    _kill_control_store(redis_cluster)
    # Lines published while the driver is away have no subscriber: print once it is back.
    wait_for(lambda: client.reconnects > before, 30, what="the driver to reconnect and subscribe again")
    skate.get(say.remote("after-restart"))  # the subscription was renewed
    wait_printed(capfd, "after-restart")


def test_requests_made_during_the_outage_wait_for_the_new_control_store(redis_cluster):
    c = redis_cluster
    skate.init(address=c.address)
    sup = psutil.Process(c._gcs_proc.proc.pid)
    sup.suspend()  # no new control store until we say so
    try:
        old = gcs_server_pid(c)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: pid_gone(old), 10, what="the control store to die")
        result: list = []
        t = threading.Thread(target=lambda: result.append(Counter.options(name="late").remote()))
        t.start()  # registering an actor needs the control store
        t.join(0.5)
        assert t.is_alive() and not result
    finally:
        sup.resume()
    t.join(30)
    assert skate.get(result[0].inc.remote()) == 1
    assert skate.get(skate.get_actor("late").inc.remote()) == 2


def test_a_driver_reattaches_to_its_job_and_detached_actors_outlive_it(redis_cluster):
    c = redis_cluster
    skate.init(address=c.address, namespace="app")
    keeper = Counter.options(name="keeper", lifetime="detached").remote()
    skate.get(keeper.inc.remote())
    core = runtime.current_or_none()
    job = core.job_id
    _kill_control_store(c)
    jobs = wait_for(lambda: core.gcs_call("ping") and _jobs(c), 15)
    assert jobs[job]["alive"]  # reattached, not ended by the restart
    skate.shutdown()
    wait_for(lambda: not _jobs(c)[job]["alive"], 15, what="the job to end with its driver")
    _kill_control_store(c)
    skate.init(address=c.address, namespace="app")
    assert skate.get(skate.get_actor("keeper").inc.remote()) == 2
    skate.kill(skate.get_actor("keeper"))


def _jobs(c: Cluster) -> dict:
    from skate._private.gcs.redis_storage import namespace_for
    from skate._private.gcs.storage import open_storage

    s = open_storage(c._gcs_storage_url, namespace_for(c._info["token"]))
    try:
        return dict(s.items("jobs"))
    finally:
        s.close()


def test_without_durable_storage_the_cluster_ends_with_its_control_store():
    """The in-memory control store is not restarted: its node daemons exit (documented)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        daemons = _node_pids(c)
        c._gcs_proc.proc.kill()
        for pid in daemons:
            wait_for(lambda pid=pid: pid_gone(pid), 15, what="node daemons to exit")
    finally:
        c.shutdown()


def test_skate_gcs_storage_selects_redis_for_an_embedded_cluster(redis_url, monkeypatch):
    monkeypatch.setattr(CONFIG, "gcs_storage", redis_url)
    skate.init(num_cpus=1)
    core = runtime.current_or_none()
    a = Counter.options(name="embedded").remote()
    assert skate.get(a.inc.remote()) == 1
    sup = [p for p in psutil.Process().children() if "gcs.supervisor" in " ".join(p.cmdline())]
    assert len(sup) == 1
    gcs = [p for p in sup[0].children() if " ".join(p.cmdline()).startswith("skate::gcs")]
    os.kill(gcs[0].pid, signal.SIGKILL)
    wait_for(lambda: core.gcs_call("ping") == "pong", 20)
    assert skate.get(skate.get_actor("embedded").inc.remote()) == 2


def test_a_bad_storage_url_fails_the_start_with_its_reason(redis_url):
    with pytest.raises(ConnectionError, match="cannot reach"):
        node.start_head(1, storage="redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="unsupported"):
        node.start_head(1, storage="mongo://x")


def test_a_node_that_dies_during_the_outage_is_declared_dead_after_it(redis_url, monkeypatch):
    monkeypatch.setenv("SKATE_NODE_TIMEOUT_S", "2")  # read by the control store processes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_storage": redis_url})
    try:
        other = c.add_node(num_cpus=1)
        skate.init(address=c.address)
        sup = psutil.Process(c._gcs_proc.proc.pid)
        sup.suspend()
        try:
            old = gcs_server_pid(c)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: pid_gone(old), 10, what="the control store to die")
            other.kill()  # dies while nobody watches
        finally:
            sup.resume()
        wait_for(lambda: [n["Alive"] for n in skate.nodes()].count(True) == 1, 30,
                 what="the node that died during the outage to be declared dead")
        dead = [n for n in skate.nodes() if not n["Alive"]]
        assert [n["NodeID"] for n in dead] == [other.node_id]
    finally:
        skate.shutdown()
        c.shutdown()
