"""The Redis backend of the control store's storage, against a real redis-server."""

from __future__ import annotations

import pytest

from skate._private.config import CONFIG
from skate._private.gcs.actors import ALIVE, DEAD
from skate._private.gcs.redis_storage import RedisStorage, namespace_for
from skate._private.gcs.server import GcsServer
from skate._private.gcs.storage import MemoryStorage, Table, open_storage


class _Conn:
    def __init__(self) -> None:
        self.on_close: list = []
        self.sent: list = []
        self.peer = None

    def notify(self, method, body=None):
        self.sent.append((method, body))

    def close(self) -> None:
        for cb in self.on_close:
            cb(self)


def test_records_round_trip_with_their_key_types(redis_url):
    s = open_storage(redis_url, "t1")
    assert isinstance(s, RedisStorage)
    s.put("kv", ("ns", "k"), b"\x00bytes")
    s.put("actors", b"\x01" * 16, {"state": ALIVE, "owner": [b"w", "127.0.0.1", 5, None], "n": 1.5})
    s.put("jobs", 3, {"alive": True, "namespace": None})
    assert s.get("kv", ("ns", "k")) == b"\x00bytes"
    assert s.get("actors", b"\x01" * 16)["owner"] == [b"w", "127.0.0.1", 5, None]
    assert dict(s.items("kv")) == {("ns", "k"): b"\x00bytes"}
    assert dict(s.items("jobs")) == {3: {"alive": True, "namespace": None}}
    assert s.delete("kv", ("ns", "k")) and not s.delete("kv", ("ns", "k"))
    assert s.get("kv", ("ns", "k")) is None
    s.drop_all()
    assert list(s.items("actors")) == []
    s.close()


def test_a_table_reloads_what_a_previous_process_wrote(redis_url):
    first = Table(open_storage(redis_url, "t2"), "kv")
    first.set(("ns", "a"), b"1")
    first.set(("ns", "b"), b"2")
    first.delete(("ns", "b"))
    again = Table(open_storage(redis_url, "t2"), "kv")  # a new control store, same Redis
    assert again.items() == [(("ns", "a"), b"1")]


def test_clusters_sharing_a_redis_do_not_see_each_other(redis_url):
    a = open_storage(redis_url, namespace_for(b"token-a"))
    b = open_storage(redis_url, namespace_for(b"token-b"))
    a.put("kv", ("ns", "k"), b"a")
    assert b.get("kv", ("ns", "k")) is None
    assert namespace_for(b"token-a") != namespace_for(b"token-b")
    assert b"token-a".decode() not in namespace_for(b"token-a")  # the token itself is not stored


def test_unreachable_or_unknown_storage_is_refused():
    with pytest.raises(ConnectionError, match="cannot reach"):
        open_storage("redis://127.0.0.1:1", "x")
    with pytest.raises(ValueError, match="redis://HOST:PORT"):
        open_storage("etcd://127.0.0.1:2379")
    assert isinstance(open_storage("memory"), MemoryStorage)


def test_control_store_state_survives_a_new_server_over_the_same_redis(redis_url):
    storage = open_storage(redis_url, "t3")
    gcs = GcsServer(b"tok", storage)
    assert gcs.on_gcs_info(None, None, []) == {"durable": True}
    job_conn = _Conn()
    job = gcs.on_new_job(job_conn, {"driver_pid": 1, "namespace": "ns"}, [])
    gcs.on_kv_put(None, ["ns", "key", True], [b"value"])
    info = {"actor_id": b"a" * 16, "name": "svc", "namespace": "ns", "class_name": "A", "detached": True,
            "owner": [], "job_id": job, "max_restarts": 0}
    gcs.on_register_actor(None, info, [b"handle"])
    gcs.on_update_actor(None, {"actor_id": b"a" * 16, "state": ALIVE, "node_id": b"n" * 16}, [])
    node = {"node_id": b"n" * 16, "ip": "127.0.0.1", "port": 1, "uds": "/x", "resources": {"CPU": 1.0},
            "store_prefix": "p", "pid": 1, "session_dir": "/s", "is_head": True}
    gcs.on_register_node(_Conn(), node, [])

    again = GcsServer(b"tok", open_storage(redis_url, "t3"))  # the restarted control store
    assert again.on_kv_get(None, ["ns", "key"], []).bufs == [b"value"]
    assert again.actors.by_name("ns", "svc")["state"] == ALIVE
    assert again.on_get_named_actor(None, {"namespace": "ns", "name": "svc"}, []).bufs == [b"handle"]
    assert [n["alive"] for n in again.nodes.all()] == [True]
    assert again.jobs.get(job)["alive"] and job in again.unclaimed_jobs
    # The driver reattaches to its job; a new job gets a new id.
    assert again.on_new_job(_Conn(), {"driver_pid": 1, "namespace": "ns", "job_id": job}, []) == job
    assert job not in again.unclaimed_jobs
    assert again.on_new_job(_Conn(), {"driver_pid": 2, "namespace": "ns"}, []) == job + 1
    # Registering the same actor again (a request repeated after a restart) changes nothing.
    again.on_register_actor(None, info, [b"handle"])
    assert again.actors.by_name("ns", "svc")["state"] == ALIVE


def test_a_node_declared_dead_cannot_register_again():
    gcs = GcsServer(b"tok", MemoryStorage())
    node = {"node_id": b"n" * 16, "ip": "127.0.0.1", "port": 1, "uds": "/x", "resources": {"CPU": 1.0},
            "store_prefix": "p", "pid": 1, "session_dir": "/s", "is_head": False}
    conn = _Conn()
    gcs.on_register_node(conn, node, [])
    conn.close()
    with pytest.raises(ValueError, match="declared dead"):
        gcs.on_register_node(_Conn(), node, [])


def test_history_is_bounded_and_job_ids_are_never_reused(monkeypatch):
    monkeypatch.setattr(CONFIG, "max_dead_actors", 3)
    monkeypatch.setattr(CONFIG, "max_finished_jobs", 2)
    gcs = GcsServer(b"tok", MemoryStorage())
    for i in range(10):
        aid = bytes([i]) * 16
        gcs.on_register_actor(None, {"actor_id": aid, "name": None, "namespace": "ns", "class_name": "A",
                                     "detached": False, "owner": [], "job_id": 1, "max_restarts": 0}, [b""])
        if i < 8:
            gcs.on_update_actor(None, {"actor_id": aid, "state": DEAD, "cause": "done"}, [])
    conns = [_Conn() for _ in range(6)]
    jobs = [gcs.on_new_job(c, {"driver_pid": 1, "namespace": None}, []) for c in conns]
    for c in conns[:5]:
        c.close()
    gcs.trim()
    states = [a["state"] for a in gcs.actors.actors.values()]
    assert states.count(DEAD) == 3 and len(states) == 5  # the 2 live ones stay
    assert {aid[0] for aid, a in gcs.actors.actors.items() if a["state"] == DEAD} == {5, 6, 7}  # newest kept
    assert len(gcs.jobs) == 3 and gcs.jobs.get(jobs[-1])["alive"]
    new = gcs.on_new_job(_Conn(), {"driver_pid": 1, "namespace": None}, [])
    assert new == max(jobs) + 1
