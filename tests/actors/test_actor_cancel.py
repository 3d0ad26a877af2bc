"""``ray.cancel`` of actor calls (follows Ray):

- a call still waiting its turn (behind a running call, or for a free slot of
  a threaded or async actor) never runs and fails with ``TaskCancelledError``;
- a running call of an async actor is cancelled (its coroutine gets
  ``CancelledError``);
- a running call of a sync or threaded actor is never interrupted: it runs to
  its end and its caller gets ``TaskCancelledError``;
- a generator method stops at its next item;
- ``force=True`` is refused for actor calls.

A cancel goes to the actor's control endpoint; ``__ray_ready__`` takes the
same connection after it, so once it answered, the cancel has arrived.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from conftest import wait_for

import skate
from skate.exceptions import TaskCancelledError
from skate.util import state

pytestmark = pytest.mark.timeout(120)


def _wait_file(path: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)


@skate.remote
class Sync:
    def __init__(self):
        self.ran: list[str] = []
        self.steps = 0
        self.lock = threading.Lock()

    def block(self, started, gate):
        open(started, "w").close()
        _wait_file(gate)
        with self.lock:
            self.ran.append("block")
        return "block"

    def steps_until(self, started, gate):
        open(started, "w").close()
        while not os.path.exists(gate):  # (runs bytecode all along: an interrupt would land)
            self.steps += 1
            time.sleep(0.001)
        with self.lock:
            self.ran.append("steps_until")
        return self.steps

    def mark(self, what):
        with self.lock:
            self.ran.append(what)
        return what

    def record(self):
        return list(self.ran)

    def items(self):
        for i in range(600_000):  # (a minute at least: the cancel ends it long before)
            yield i
            time.sleep(0.0001)


@skate.remote
class Async:
    def __init__(self):
        self.ran: list[str] = []
        self.cancelled = 0

    async def block(self, started, gate):
        open(started, "w").close()
        try:
            while not os.path.exists(gate):
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.ran.append("block")
        return "block"

    async def mark(self, what):
        self.ran.append(what)
        return what

    async def record(self):
        return list(self.ran), self.cancelled


def _arrived(actor) -> None:
    skate.get(actor.__ray_ready__.remote(), timeout=30)


@pytest.mark.parametrize("max_concurrency", [1, 2])
def test_a_waiting_call_of_a_sync_actor_is_cancelled_and_never_runs(ray_start, tmp_path, max_concurrency):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Sync.options(max_concurrency=max_concurrency).remote()
    blockers = [a.block.remote(started + str(i), gate) for i in range(max_concurrency)]
    for i in range(max_concurrency):
        _wait_file(started + str(i))
    waiting = a.mark.remote("waiting")
    skate.cancel(waiting)
    _arrived(a)
    open(gate, "w").close()
    with pytest.raises(TaskCancelledError):
        skate.get(waiting, timeout=30)
    assert skate.get(blockers, timeout=30) == ["block"] * max_concurrency
    assert skate.get(a.mark.remote("after"), timeout=30) == "after"
    assert skate.get(a.record.remote(), timeout=30) == ["block"] * max_concurrency + ["after"]


def test_a_call_of_an_async_actor_waiting_for_a_slot_is_cancelled_at_once(ray_start, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Async.options(max_concurrency=1).remote()
    blocker = a.block.remote(started, gate)
    _wait_file(started)
    waiting = a.mark.remote("waiting")
    skate.cancel(waiting)
    # Answered while the slot is still taken: it no longer waits for one.
    with pytest.raises(TaskCancelledError):
        skate.get(waiting, timeout=30)
    open(gate, "w").close()
    assert skate.get(blocker, timeout=30) == "block"
    assert skate.get(a.mark.remote("after"), timeout=30) == "after"
    assert skate.get(a.record.remote(), timeout=30) == (["block", "after"], 0)


def test_a_running_call_of_an_async_actor_is_cancelled(ray_start, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Async.remote()
    running = a.block.remote(started, gate)
    _wait_file(started)
    skate.cancel(running)
    with pytest.raises(TaskCancelledError):
        skate.get(running, timeout=30)
    assert skate.get(a.record.remote(), timeout=30) == ([], 1)


@pytest.mark.parametrize("max_concurrency", [1, 2])
def test_a_running_call_of_a_sync_actor_runs_to_its_end_and_reports_cancelled(ray_start, tmp_path, max_concurrency):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Sync.options(max_concurrency=max_concurrency).remote()
    running = a.steps_until.remote(started, gate)
    _wait_file(started)
    skate.cancel(running)
    _arrived(a)
    open(gate, "w").close()
    with pytest.raises(TaskCancelledError):
        skate.get(running, timeout=30)
    # Not interrupted: the method got to its last line.
    assert skate.get(a.record.remote(), timeout=30) == ["steps_until"]


def test_a_generator_method_stops_at_its_next_item(ray_start):
    a = Sync.remote()
    gen = a.items.remote()
    assert skate.get(next(gen), timeout=30) == 0
    skate.cancel(gen)
    with pytest.raises(TaskCancelledError):
        for ref in gen:  # the items made before the cancel, then the cancellation
            skate.get(ref, timeout=30)
    assert skate.get(a.mark.remote("after"), timeout=30) == "after"


def test_force_is_refused_for_actor_calls(ray_start):
    a = Sync.remote()
    ref = a.mark.remote("x")
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        skate.cancel(ref, force=True)
    assert skate.get(ref, timeout=30) == "x"


# --- async actors: the races a review found ------------------------------------------------


@skate.remote
class Owner:
    def make(self):
        return [skate.put(b"x" * 1000)]

    def pid(self):
        return os.getpid()


def test_a_call_cancelled_before_the_async_actors_loop_read_it_never_runs(ray_start, tmp_path):
    @skate.remote
    class Blocking:
        async def block(self, started, gate):
            open(started, "w").close()
            _wait_file(gate)  # (blocks the actor's event loop: the next call stays unread)
            return "block"

        async def mark(self, path):
            open(path, "w").close()
            return "ran"

    started, gate, marker = (str(tmp_path / n) for n in ("started", "gate", "marker"))
    a = Blocking.remote()
    blocker = a.block.remote(started, gate)
    _wait_file(started)
    unread = a.mark.remote(marker)
    skate.cancel(unread)
    _arrived(a)
    open(gate, "w").close()
    assert skate.get(blocker, timeout=30) == "block"
    with pytest.raises(TaskCancelledError):
        skate.get(unread, timeout=30)
    assert not os.path.exists(marker)
    # The state API lists it as failed, as it does a call cancelled while it waited for a slot.
    listed = wait_for(lambda: [t for t in state.list_tasks(filters=[("name", "=", "Blocking.mark")], limit=None)
                               if t.state == "FAILED"], 20, 0.1, "the cancelled call in the state API")
    assert listed[0].error_type == "TaskCancelledError"


def test_exit_actor_in_an_async_call_holding_a_borrowed_ref_lets_no_waiting_call_run(ray_start, tmp_path):
    """The exiting call announces the borrow of its argument (an await) after it
    gave its slot back: the call waiting for that slot must not start."""

    @skate.remote(max_concurrency=1)
    class Quitter:
        async def quit(self, box, started):
            tasks = len(asyncio.all_tasks())
            open(started, "w").close()
            while len(asyncio.all_tasks()) <= tasks:  # until the next call waits for the slot
                await asyncio.sleep(0.005)
            skate.actor.exit_actor()

        async def mark(self, path):
            open(path, "w").close()
            return "ran"

    started, marker = str(tmp_path / "started"), str(tmp_path / "marker")
    owner = Owner.remote()  # (kept: its refs live as long as it does)
    box = skate.get(owner.make.remote(), timeout=30)  # a ref owned by another process
    a = Quitter.remote()
    quitting = a.quit.remote(box, started)
    _wait_file(started)
    waiting = a.mark.remote(marker)
    for ref in (quitting, waiting):
        with pytest.raises(skate.exceptions.ActorDiedError):
            skate.get(ref, timeout=30)
    assert not os.path.exists(marker)


def test_a_cancel_while_an_async_call_waits_for_its_borrows_still_answers(ray_start, tmp_path):
    """The method returned and the call waits for the owner of a ref it keeps
    to acknowledge the borrow (the owner is stopped): a cancel then must not
    swallow the reply."""
    import signal

    @skate.remote
    class Keeper:
        async def keep(self, box, returned):
            self.x = box[0]
            open(returned, "w").close()
            return "kept"

        async def ping(self):
            return "pong"

    returned = str(tmp_path / "returned")
    owner = Owner.remote()
    box = skate.get(owner.make.remote(), timeout=30)
    opid = skate.get(owner.pid.remote(), timeout=30)
    a = Keeper.remote()
    assert skate.get(a.ping.remote(), timeout=30) == "pong"
    os.kill(opid, signal.SIGSTOP)
    try:
        ref = a.keep.remote(box, returned)
        _wait_file(returned)
        skate.cancel(ref)
        _arrived(a)  # the cancel reached the actor ...
        assert skate.get(a.ping.remote(), timeout=30) == "pong"  # ... and its loop ran it
    finally:
        os.kill(opid, signal.SIGCONT)
    assert skate.get(ref, timeout=30) == "kept"
    assert skate.get(a.ping.remote(), timeout=30) == "pong"


def test_a_sync_generator_method_of_an_async_actor_stops_when_cancelled(ray_start):
    @skate.remote
    class Gen:
        def __init__(self):
            self.made = 0

        def items(self):
            for i in range(100_000):
                time.sleep(0.001)
                self.made += 1
                yield i

        async def made_over(self, seconds):
            before = self.made
            await asyncio.sleep(seconds)  # (a window to see whether it still makes items)
            return before, self.made

    a = Gen.remote()
    gen = a.items.options(num_returns="streaming").remote()
    assert skate.get(next(gen), timeout=30) == 0
    skate.cancel(gen)
    with pytest.raises(TaskCancelledError):
        for ref in gen:
            skate.get(ref, timeout=30)
    before, after = skate.get(a.made_over.remote(0.3), timeout=30)
    assert after - before <= 1, (before, after)
