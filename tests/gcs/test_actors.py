"""The actor directory's state machine, without sockets: restarts, stale reports, owners, bounded waits."""

from __future__ import annotations

import asyncio

from skate._private.gcs.actors import ALIVE, DEAD, PENDING, RESTARTING, ActorDirectory
from skate._private.gcs.storage import MemoryStorage

W1, W2 = b"\x01" * 16, b"\x02" * 16


def _directory(max_restarts: int = 1, detached: bool = False, name: str | None = None) -> tuple[ActorDirectory, list]:
    published: list = []
    d = ActorDirectory(MemoryStorage(), lambda ch, msg: published.append((ch, msg)))
    d.register(
        {"actor_id": b"a", "name": name, "namespace": "ns", "class_name": "A", "detached": detached,
         "owner": [], "job_id": 1, "max_restarts": max_restarts},
        b"",
    )
    return d, published


def _exit_report(worker_id: bytes) -> dict:
    return {"actor_id": b"a", "worker_id": worker_id, "state": DEAD, "cause_if_unset": "the actor's worker process exited"}


def test_a_worker_exit_makes_a_restartable_actor_restarting_not_dead():
    d, _ = _directory(max_restarts=1)
    d.update(b"a", {"state": ALIVE, "worker_id": W1, "num_restarts": 0})
    d.update(b"a", _exit_report(W1))
    assert d.actors.get(b"a")["state"] == RESTARTING
    d.update(b"a", {"state": ALIVE, "worker_id": W2, "num_restarts": 1})
    assert d.actors.get(b"a")["state"] == ALIVE
    d.update(b"a", _exit_report(W1))  # the old incarnation's worker, reported late: ignored
    assert d.actors.get(b"a")["state"] == ALIVE
    d.update(b"a", _exit_report(W2))  # restarts spent: dead, with the report as its cause
    actor = d.actors.get(b"a")
    assert actor["state"] == DEAD and "worker process" in actor["cause"]


def test_a_report_while_it_restarts_is_ignored_and_dead_is_final():
    d, _ = _directory(max_restarts=1)
    d.update(b"a", {"state": ALIVE, "worker_id": W1})
    d.update(b"a", {"state": RESTARTING, "num_restarts": 1})
    d.update(b"a", _exit_report(W1))
    assert d.actors.get(b"a")["state"] == RESTARTING
    d.update(b"a", {"state": DEAD, "cause": "killed"})
    d.update(b"a", {"state": ALIVE})
    assert d.actors.get(b"a")["state"] == DEAD and d.actors.get(b"a")["cause"] == "killed"


def test_node_death_restarts_or_kills_by_restarts_left():
    d, _ = _directory(max_restarts=0)
    d.update(b"a", {"state": ALIVE, "node_id": b"n"})
    d.node_died(b"n", "gone")
    assert d.actors.get(b"a")["state"] == DEAD
    d2, _ = _directory(max_restarts=-1)
    d2.update(b"a", {"state": ALIVE, "node_id": b"n"})
    d2.node_died(b"n", "gone")
    assert d2.actors.get(b"a")["state"] == RESTARTING


def test_owner_gone_kills_its_actors_and_frees_a_pending_detached_name():
    d, _ = _directory(detached=True, name="x")
    assert d.actors.get(b"a")["state"] == PENDING
    d.owner_gone([b"a"])
    assert d.actors.get(b"a")["state"] == DEAD and d.by_name("ns", "x") is None
    d2, _ = _directory(detached=True, name="y")
    d2.update(b"a", {"state": ALIVE})
    d2.owner_gone([b"a"])  # a created detached actor outlives its creator
    assert d2.actors.get(b"a")["state"] == ALIVE
    d3, _ = _directory()
    d3.update(b"a", {"state": ALIVE})
    d3.owner_gone([b"a"])
    assert d3.actors.get(b"a")["state"] == DEAD


def test_get_waits_for_an_incarnation_with_a_bound():
    async def main():
        d, _ = _directory(max_restarts=-1)
        d.update(b"a", {"state": ALIVE, "num_restarts": 0})
        # Bounded: answers with the current record after the timeout.
        rec = await d.get(b"a", wait=True, min_restarts=1, timeout=0.05)
        assert rec["state"] == ALIVE and rec["num_restarts"] == 0
        waiter = asyncio.ensure_future(d.get(b"a", wait=True, min_restarts=1, timeout=10))
        await asyncio.sleep(0)
        d.update(b"a", {"state": RESTARTING, "num_restarts": 1})
        await asyncio.sleep(0)
        assert not waiter.done()
        d.update(b"a", {"state": ALIVE, "num_restarts": 1})
        rec = await asyncio.wait_for(waiter, 5)
        assert rec["num_restarts"] == 1

    asyncio.run(main())
