"""The control store's tables, without sockets: storage, actor directory, node table."""

from __future__ import annotations

import asyncio
import sys

import pytest

from skate._private.gcs.actors import ALIVE, DEAD, PENDING, ActorDirectory
from skate._private.gcs.nodes import NodeTable
from skate._private.gcs.storage import MemoryStorage, Table, open_storage


class _Conn:
    """Stands in for a connection: records close callbacks and notifications."""

    def __init__(self) -> None:
        self.on_close: list = []
        self.sent: list = []
        self.peer = None

    def notify(self, method, body=None):
        self.sent.append((method, body))


def test_table_writes_through_and_reloads_from_its_storage():
    storage = MemoryStorage()
    t = Table(storage, "kv")
    t.set(("ns", "k"), b"v")
    assert t.get(("ns", "k")) == b"v" and ("ns", "k") in t and len(t) == 1
    # A new table over the same storage sees what was written (a restarted control store).
    assert Table(storage, "kv").get(("ns", "k")) == b"v"
    assert t.delete(("ns", "k")) == b"v"
    assert Table(storage, "kv").get(("ns", "k")) is None


def test_open_storage_rejects_backends_it_does_not_have():
    assert isinstance(open_storage(None), MemoryStorage)
    assert isinstance(open_storage("memory"), MemoryStorage)
    with pytest.raises(ValueError, match="unsupported control store storage"):
        open_storage("sqlite:///tmp/x.db")


def _actor(aid: bytes, name: str | None = None) -> dict:
    return {
        "actor_id": aid, "name": name, "namespace": "ns", "class_name": "A", "detached": False,
        "owner": [], "job_id": 1, "max_restarts": 0,
    }


def test_actor_names_are_unique_while_alive_and_free_once_dead():
    published = []
    d = ActorDirectory(MemoryStorage(), lambda ch, msg: published.append((ch, msg)))
    d.register(_actor(b"a1", "x"), b"meta")
    assert d.by_name("ns", "x")["state"] == PENDING
    with pytest.raises(ValueError, match="already taken"):
        d.register(_actor(b"a2", "x"), b"meta")
    d.update(b"a1", {"actor_id": b"a1", "state": DEAD, "cause": "killed"})
    assert d.by_name("ns", "x") is None
    assert published[-1][0] == "actor" and published[-1][1]["state"] == DEAD
    assert "handle" not in published[-1][1]
    d.register(_actor(b"a2", "x"), b"meta")  # the name is free again
    assert d.by_name("ns", "x")["actor_id"] == b"a2"


def test_the_first_cause_of_death_is_kept():
    d = ActorDirectory(MemoryStorage(), lambda ch, msg: None)
    d.register(_actor(b"a"), b"")
    d.update(b"a", {"actor_id": b"a", "state": DEAD, "cause": "first"})
    d.update(b"a", {"actor_id": b"a", "state": DEAD, "cause": "second"})
    d.update(b"a", {"actor_id": b"a", "cause_if_unset": "third"})
    assert d.actors.get(b"a")["cause"] == "first"


def test_waiting_for_an_actor_returns_once_it_is_alive():
    async def main():
        d = ActorDirectory(MemoryStorage(), lambda ch, msg: None)
        d.register(_actor(b"a"), b"")
        waiter = asyncio.ensure_future(d.get(b"a", wait=True))
        await asyncio.sleep(0)
        assert not waiter.done()
        d.update(b"a", {"actor_id": b"a", "state": ALIVE})
        assert (await asyncio.wait_for(waiter, 5))["state"] == ALIVE

    asyncio.run(main())


def test_resource_reports_are_versioned_deltas_broadcast_in_batches():
    published = []
    nodes = NodeTable(MemoryStorage(), lambda ch, msg: published.append((ch, msg)), lambda n, why: None)
    for nid in (b"n1", b"n2"):
        nodes.register(_Conn(), {"node_id": nid, "ip": "127.0.0.1", "port": 1, "uds": "", "store_prefix": "p",
                                 "resources": {"CPU": 4.0, "GPU": 1.0}, "pid": 1, "session_dir": "", "is_head": False})
    published.clear()
    nodes.heartbeat(b"n1")  # liveness only
    nodes.flush_resources()
    assert published == []  # nothing changed: nothing sent
    nodes.heartbeat(b"n1", {"CPU": 3.0}, version=1)
    nodes.heartbeat(b"n1", {"CPU": 2.0}, version=2)
    nodes.heartbeat(b"n1", {"CPU": 9.0}, version=1)  # stale: ignored
    nodes.heartbeat(b"n2", {"GPU": 0.0}, version=1)
    nodes.flush_resources()
    assert published == [("resources", [[b"n1", 2, {"CPU": 2.0}], [b"n2", 1, {"GPU": 0.0}]])]  # one message
    assert nodes.nodes.get(b"n1")["available"] == {"CPU": 2.0, "GPU": 1.0}
    nodes.flush_resources()
    assert len(published) == 1


def test_a_dead_node_takes_its_actors_with_it():
    d = ActorDirectory(MemoryStorage(), lambda ch, msg: None)
    published = []
    nodes = NodeTable(MemoryStorage(), lambda ch, msg: published.append((ch, msg)), d.node_died)
    conn = _Conn()
    info = {"node_id": b"n1", "ip": "127.0.0.1", "port": 1, "uds": "", "resources": {"CPU": 1.0},
            "store_prefix": "p", "pid": 1, "session_dir": "", "is_head": True}
    assert [n["node_id"] for n in nodes.register(conn, info)] == [b"n1"]
    d.register(_actor(b"a"), b"")
    d.update(b"a", {"actor_id": b"a", "state": ALIVE, "node_id": b"n1"})
    nodes.heartbeat(b"n1", {"CPU": 0.0}, version=1)
    nodes.flush_resources()
    assert published[-1] == ("resources", [[b"n1", 1, {"CPU": 0.0}]])
    nodes.drain(b"n1")
    assert conn.sent == [("shutdown", None)]
    assert not nodes.nodes.get(b"n1")["alive"]
    assert d.actors.get(b"a")["state"] == DEAD
    assert "its node died (removed)" in d.actors.get(b"a")["cause"]


def _rows(*rows):
    """A ``TaskEventBatch`` from one worker: (task id, state, start, end, func) per row."""
    return {"job_id": 1, "node_id": b"n", "worker_id": b"w", "pid": 7,
            "rows": [(tid, "f", state, start, end, None, None, func, None, "") for tid, state, start, end, func in rows],
            "calls": []}


def test_task_events_merge_and_a_late_running_report_does_not_undo_the_end():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=2)
    t.add(_rows((b"a", "FINISHED", 1.0, 2.0, "")))
    assert t.query()[0] == {"task_id": b"a", "name": "f", "state": "FINISHED", "job_id": 1, "node_id": b"n",
                            "worker_id": b"w", "pid": 7, "start": 1.0, "end": 2.0}
    t.add(_rows((b"a", "RUNNING", 0.5, None, "mod.f")))
    rec = t.query()[0]
    assert (rec["state"], rec["start"], rec["end"], rec["func"]) == ("FINISHED", 0.5, 2.0, "mod.f")
    t.add(_rows((b"b", "RUNNING", None, None, ""), (b"c", "RUNNING", None, None, "")))
    assert [r["task_id"] for r in t.query()] == [b"b", b"c"]  # bounded: the newest tasks
    assert [r["task_id"] for r in t.query([["task_id", "=", b"c".hex()]])] == [b"c"]
    assert t.query()[0]["start"] is None


def test_an_evicted_end_keeps_a_later_running_report_from_reviving_the_task():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=2)
    t.add(_rows((b"x", "FINISHED", 1.0, 2.0, "")))
    t.add(_rows((b"x", "RUNNING", 1.0, None, "")))  # the worker's report, after the owner's
    t.add(_rows(*[(b"y", "RUNNING", 3.0, None, "")] * 3))
    assert t.evicted == 1  # x's FINISHED batch went
    recs = {r["task_id"]: r for r in t.query()}
    assert (recs[b"x"]["state"], recs[b"x"]["end"]) == ("FINISHED", 2.0)


def test_a_table_that_keeps_nothing_takes_batches_without_error():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=0)
    t.add(_rows((b"a", "FINISHED", 1.0, 2.0, "")))
    assert t.query() == []


def test_task_event_rows_name_the_worker_that_ran_them():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable()
    batch = _rows((b"a", "FINISHED", 1.0, 2.0, ""))
    batch["rows"] = [batch["rows"][0][:6] + (("ValueError", "boom"), "", (b"n2", b"w2", 9), "")]
    t.add(batch)
    rec = t.query()[0]
    assert (rec["node_id"], rec["worker_id"], rec["pid"]) == (b"n2", b"w2", 9)
    assert (rec["error_type"], rec["error_message"]) == ("ValueError", "boom")


def _calls(actor_id, name, calls):
    """``FinishedCalls`` columns: (16-byte task id, start, end) per call."""
    import array

    times = array.array("d", [x for _, start, end in calls for x in (start, end)])
    return (actor_id, name, b"".join(tid for tid, _, _ in calls), times.tobytes())


def test_finished_actor_calls_travel_as_columns_and_read_as_records():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=10)
    a, b, c = (bytes([i]) * 16 for i in (1, 2, 3))
    batch = _rows((a, "RUNNING", 1.0, None, "A.m"))  # a call that ran through a flush, then ended
    batch["calls"] = [_calls(b"actor", "A.m", [(b, 2.0, 2.5), (c, 3.0, 3.5)])]
    t.add(batch)
    later = _rows()
    later["calls"] = [_calls(b"actor", "A.m", [(a, 1.0, 4.0)])]
    t.add(later)
    recs = {r["task_id"]: r for r in t.query()}
    assert recs[b] == {"task_id": b, "name": "A.m", "state": "FINISHED", "job_id": 1, "node_id": b"n",
                       "worker_id": b"w", "pid": 7, "start": 2.0, "end": 2.5, "actor_id": b"actor", "func": "A.m"}
    assert (recs[a]["state"], recs[a]["start"], recs[a]["end"]) == ("FINISHED", 1.0, 4.0)
    assert list(recs) == [a, b, c]  # in the order first seen
    assert t.rows == 4


def test_finished_actor_calls_count_toward_the_limit_and_are_evicted_with_their_batch():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=2)
    for i in range(3):
        batch = _rows()
        batch["calls"] = [_calls(b"actor", "A.m", [(bytes([i, j]) * 8, 1.0, 2.0) for j in range(2)])]
        t.add(batch)
    assert (t.evicted, t.rows) == (2, 4)
    assert [r["task_id"][:2] for r in t.query()] == [bytes([2, 0]), bytes([2, 1])]


def test_columns_that_do_not_add_up_are_refused_and_nothing_of_the_batch_is_kept():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=10)
    batch = _rows((b"x", "FINISHED", 1.0, 2.0, ""))
    batch["calls"] = [(b"actor", "A.m", b"\x01" * 16, b"\x00" * 8)]  # one id, half of its times
    with pytest.raises(ValueError, match="16 bytes per call"):
        t.add(batch)
    assert t.query() == [] and t.rows == 0


@pytest.mark.parametrize("where", ["row start", "row end", "column"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_times_that_are_not_finite_are_refused(where, bad):
    """An event time of NaN or infinity would make every later query fail
    (a start in milliseconds is an int): the batch is refused, the table
    keeps serving."""
    import array

    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=10)
    t.add(_rows((b"ok" * 8, "FINISHED", 1.0, 2.0, "")))
    if where == "column":
        batch = _rows()
        times = array.array("d", [1.0, bad])
        if sys.byteorder != "little":
            times.byteswap()
        batch["calls"] = [(b"actor", "A.m", b"\x01" * 16, times.tobytes())]
    else:
        batch = _rows((b"x" * 16, "FINISHED", bad if where == "row start" else 1.0, bad if where == "row end" else 2.0, ""))
    with pytest.raises(ValueError, match="not a finite number"):
        t.add(batch)
    assert [r["task_id"] for r in t.query()] == [b"ok" * 8]


def test_finite_times_whose_sum_overflows_are_kept():
    """Times are checked with one sum, then row by row only when the sum is
    not finite: huge but finite times are still kept."""
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=10)
    t.add(_rows((b"a" * 16, "FINISHED", 1e308, 1.7e308, ""), (b"b" * 16, "FINISHED", 1e308, 1.7e308, "")))
    assert [r["end"] for r in t.query()] == [1.7e308, 1.7e308]


def test_evicted_rows_kept_for_their_ends_stay_bounded():
    """Evicted batches stay (unread) while they hold the last ``limit`` ends,
    at most ``8 * limit`` rows: a flood of reports of tasks starting cannot
    grow them without bound."""
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=4)
    for i in range(100):
        t.add(_rows((bytes([i]) * 16, "FINISHED", 1.0, 2.0, ""), (bytes([i]) * 16, "RUNNING", 1.0, None, "")))
    assert t.rows < 2 * 4 + 2 and 4 <= t.gone_ends < 4 + 1 + 1 and t.gone_rows == 2 * t.gone_ends
    assert t.evicted == 200 - t.rows
    assert [r["task_id"][0] for r in t.query()] == [96, 97, 98, 99]
    for i in range(1000):  # only starts: no ends to keep
        t.add(_rows((i.to_bytes(2, "big") * 8, "RUNNING", 1.0, None, "")))
    assert t.gone_rows <= 8 * 4


def test_an_end_evicted_while_only_other_tasks_started_is_still_known():
    from skate._private.gcs.task_events import TaskEventTable

    t = TaskEventTable(limit=4)
    t.add(_rows((b"T" * 16, "FINISHED", 1.0, 2.0, "")))
    for i in range(17):  # other tasks start: rows, but no ends
        t.add(_rows((bytes([i]) * 16, "RUNNING", 1.0, None, "")))
    t.add(_rows((b"T" * 16, "RUNNING", 1.0, None, "")))  # T's worker's report, late
    assert [(r["state"], r["end"]) for r in t.query() if r["task_id"] == b"T" * 16] == [("FINISHED", 2.0)]
