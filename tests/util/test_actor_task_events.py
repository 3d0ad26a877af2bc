"""Actor calls and creations in the state API (ACTOR_TASK / ACTOR_CREATION_TASK, like Ray),
and enable_task_events=False honoured for tasks, actors and methods."""

from __future__ import annotations

import pytest
from conftest import wait_for

import skate
from skate.util import state


def _tasks(name: str) -> list:
    return [t for t in state.list_tasks(limit=None) if t.name == name]


@skate.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def fail(self):
        raise KeyError("on purpose")

    def wait_for_file(self, path):
        import os
        import time

        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"


@skate.remote
class AsyncCounter:
    async def inc(self):
        return 1


@pytest.mark.timeout(60)
def test_actor_calls_and_creation_are_listed(ray_start):
    c = Counter.remote()
    assert skate.get([c.inc.remote() for _ in range(3)]) == [1, 2, 3]
    with pytest.raises(KeyError):
        skate.get(c.fail.remote())
    a = AsyncCounter.remote()
    assert skate.get(a.inc.remote()) == 1
    wait_for(lambda: len([t for t in _tasks("Counter.inc") if t.state == "FINISHED"]) == 3, 10, what="3 finished calls")
    wait_for(lambda: [t.state for t in _tasks("Counter.fail")] == ["FAILED"], 10, what="the failed call")
    wait_for(lambda: [t.state for t in _tasks("AsyncCounter.inc")] == ["FINISHED"], 10, what="the async call")
    call = _tasks("Counter.inc")[0]
    actor_id = c._ray_actor_id.hex()
    assert call.type == "ACTOR_TASK" and call.actor_id == actor_id
    assert call.func_or_class_name == "Counter.inc"
    assert call.worker_pid > 0 and call.start_time_ms <= call.end_time_ms
    assert call.job_id == skate.get_runtime_context().get_job_id()
    failed = _tasks("Counter.fail")[0]
    assert failed.error_type == "KeyError" and "on purpose" in failed.error_message
    wait_for(lambda: [t.state for t in _tasks("Counter.__init__")] == ["FINISHED"], 10, what="the creation task")
    created = _tasks("Counter.__init__")[0]
    assert created.type == "ACTOR_CREATION_TASK" and created.actor_id == actor_id
    only_actor = state.list_tasks(filters=[("type", "=", "ACTOR_TASK")], limit=None)
    assert {t.name for t in only_actor} == {"Counter.inc", "Counter.fail", "AsyncCounter.inc"}


@pytest.mark.timeout(60)
def test_a_running_actor_call_is_listed_as_running(ray_start, tmp_path):
    gate = tmp_path / "go"
    c = Counter.remote()
    ref = c.wait_for_file.remote(str(gate))
    wait_for(lambda: [t.state for t in _tasks("Counter.wait_for_file")] == ["RUNNING"], 15, what="the call to show as running")
    gate.touch()
    assert skate.get(ref) == "done"
    wait_for(lambda: [t.state for t in _tasks("Counter.wait_for_file")] == ["FINISHED"], 10, what="the call to finish")


@skate.remote
class Slow:
    def slow(self, seconds):
        import time

        time.sleep(seconds)  # (the call's length is what is tested: it outlasts several flushes)
        return seconds


@skate.remote
class AsyncSlow:
    async def slow(self, seconds):
        import asyncio

        await asyncio.sleep(seconds)
        return seconds


@pytest.mark.timeout(60)
def test_the_last_call_of_an_actor_that_ran_through_flushes_is_listed_as_finished(ray_start):
    """Reported as running at a flush, then ended with no other call after it:
    its end still reaches the control store (it stayed RUNNING before), for
    sync, threaded and async actors."""
    actors = {"Slow.slow": Slow.remote(), "AsyncSlow.slow": AsyncSlow.remote()}
    threaded = Slow.options(max_concurrency=4).remote()
    refs = [a.slow.remote(0.5) for a in actors.values()] + [threaded.slow.remote(0.5)]
    assert skate.get(refs) == [0.5] * 3
    wait_for(lambda: sorted(t.state for t in _tasks("Slow.slow")) == ["FINISHED"] * 2, 10,
             what="the sync and threaded calls to be listed as finished")
    wait_for(lambda: [t.state for t in _tasks("AsyncSlow.slow")] == ["FINISHED"], 10,
             what="the async call to be listed as finished")


@pytest.mark.timeout(60)
def test_enable_task_events_false_records_nothing(ray_start):
    @skate.remote(enable_task_events=False)
    def quiet():
        return 1

    @skate.remote
    def loud():
        return 2

    quiet_actor = Counter.options(enable_task_events=False).remote()
    loud_actor = Counter.remote()
    assert skate.get([quiet.remote(), loud.options(enable_task_events=False).remote()]) == [1, 2]
    assert skate.get(quiet_actor.inc.remote()) == 1
    assert skate.get(loud_actor.inc.options(enable_task_events=False).remote()) == 1
    # Recorded after the silent ones, by the same processes: once these show, the others would have.
    assert skate.get(quiet.options(enable_task_events=True).remote()) == 1
    assert skate.get(quiet_actor.inc.options(enable_task_events=True).remote()) == 2
    assert skate.get(loud_actor.inc.remote()) == 2
    wait_for(lambda: len(_tasks("quiet")) == 1 and len(_tasks("Counter.inc")) == 2, 10, what="the loud calls")
    assert _tasks("loud") == []
    assert sorted(t.actor_id for t in _tasks("Counter.inc")) == sorted(
        [quiet_actor._ray_actor_id.hex(), loud_actor._ray_actor_id.hex()]
    )
    # The quiet actor's creation is not listed either.
    assert [t.actor_id for t in _tasks("Counter.__init__")] == [loud_actor._ray_actor_id.hex()]


@skate.remote
class BrokenCtor:
    def __init__(self):
        raise ValueError("constructor on purpose")

    def ok(self):
        return 1


def test_tasks_that_end_without_a_reply_are_listed_as_failed(ray_start, tmp_path):
    """A force-cancelled task, a crashed worker's task, a call to an actor whose
    constructor raised, and that constructor: each shows FAILED with its error
    (Ray lists them as failed too), not RUNNING forever or nothing."""
    import os

    @skate.remote
    def napper(path):
        open(path, "w").close()
        import time

        time.sleep(60)

    @skate.remote(max_retries=0)
    def crasher():
        os._exit(3)

    started = tmp_path / "started"
    ref = napper.remote(str(started))
    wait_for(started.exists, 20, what="the task to start")
    skate.cancel(ref, force=True)
    with pytest.raises(skate.exceptions.TaskCancelledError):
        skate.get(ref)
    with pytest.raises(skate.exceptions.WorkerCrashedError):
        skate.get(crasher.remote())
    broken = BrokenCtor.remote()
    with pytest.raises(skate.exceptions.ActorDiedError):
        skate.get(broken.ok.remote())
    want = {
        "napper": ("NORMAL_TASK", "TaskCancelledError"),
        "crasher": ("NORMAL_TASK", "WorkerCrashedError"),
        "BrokenCtor.__init__": ("ACTOR_CREATION_TASK", "ValueError"),
        "BrokenCtor.ok": ("ACTOR_TASK", "ActorDiedError"),
    }

    def listed() -> dict | None:
        got = {n: [(t.type, t.state, t.error_type) for t in _tasks(n)] for n in want}
        done = all(got[n] == [(kind, "FAILED", err)] for n, (kind, err) in want.items())
        return got if done else None

    wait_for(listed, 20, what=f"each of {sorted(want)} to be listed once as FAILED with its error")


@pytest.mark.parametrize("mix", ["one method", "two methods", "an odd id"])
def test_finished_calls_columns_round_trip(mix):
    """What a worker's buffer sends (``FinishedCalls`` columns, or rows for an
    id that is not a task id) reads back in the control store as the calls
    recorded: ids, names, actor and both times, in order per method."""
    import os
    import types

    from skate._private.core_worker.task_events import TaskEventBuffer
    from skate._private.gcs import task_events as gcs_events

    core = types.SimpleNamespace(job_id=b"j" * 4, node_id=b"n" * 28, worker_id=b"w" * 28, post=lambda fn: None)
    buf = TaskEventBuffer(core)
    buf.actor_id = b"a" * 16
    expected = []
    for i in range(50):
        tid = os.urandom(16) if not (mix == "an odd id" and i == 7) else b"short"
        name = "A.other" if mix == "two methods" and i % 3 == 0 else "A.m"
        start = buf.call_started(tid, name)
        buf.call_ended(tid, name, start, None)
        expected.append((tid, name))
    batch = buf.take()
    assert not buf.running and not buf.calls
    got = list(batch["rows"]) + list(gcs_events._call_rows(batch["calls"]))
    assert len(batch["calls"]) == {"one method": 1, "two methods": 2, "an odd id": 1}[mix]
    assert sorted((r[0], r[1]) for r in got) == sorted(expected)
    for row in got:
        assert row[2] == "FINISHED" and row[5] == b"a" * 16 and row[3] <= row[4]
    for name in {"A.m", "A.other"}:
        assert [r[0] for r in got if r[1] == name and len(r[0]) == 16] == [
            t for t, n in expected if n == name and len(t) == 16
        ]


def test_a_watched_sync_call_is_reported_running_once_while_it_runs():
    """A sync actor call notes itself as ``(name, start)`` in the executor's
    table of calls in flight (no event call on its path): a flush reports it
    RUNNING once; other entries (thread ids, tasks, calls with events off)
    are not calls to report."""
    import types

    from skate._private.core_worker.task_events import TaskEventBuffer

    core = types.SimpleNamespace(job_id=b"j" * 4, node_id=b"n" * 28, worker_id=b"w" * 28, post=lambda fn: None)
    buf = TaskEventBuffer(core)
    buf.actor_id = b"a" * 16
    running = buf.watched = {b"1" * 16: ("A.slow", 5.0), b"2" * 16: 0, b"3" * 16: 12345}
    rows = buf.take()["rows"]
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [(b"1" * 16, "A.slow", "RUNNING", 5.0, b"a" * 16)]
    assert buf.take() is None  # reported once
    running[b"4" * 16] = ("A.slow", 6.0)
    assert [r[0] for r in buf.take()["rows"]] == [b"4" * 16]
    running.clear()
    assert buf.take() is None
    running[b"1" * 16] = ("A.slow", 7.0)  # (a retry under the same id: what was kept of it went with its end)
    assert [(r[0], r[3]) for r in buf.take()["rows"]] == [(b"1" * 16, 7.0)]


@skate.remote
class Quitter:
    def quit(self, linger):
        import time

        time.sleep(linger)  # (0.3 s: past a flush, so it was reported RUNNING first)
        skate.actor.exit_actor()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("linger", [0.0, 0.3])
def test_a_call_that_exits_its_actor_is_listed_failed(ray_start, linger):
    """Its caller gets ActorDiedError; the state API lists the call FAILED, not
    RUNNING for good (a long one) or not at all (a quick one): the worker
    sends its last events before it exits."""
    q = Quitter.remote()
    skate.get(q.__ray_ready__.remote())
    with pytest.raises(skate.exceptions.ActorDiedError):
        skate.get(q.quit.remote(linger), timeout=30)
    wait_for(lambda: [t.state for t in _tasks("Quitter.quit")] == ["FAILED"], 15, 0.1, "the call listed FAILED")
