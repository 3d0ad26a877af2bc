"""Unit tests of the node daemon's placement decisions (no I/O)."""

from __future__ import annotations

from collections import Counter

from skate._private.raylet.scheduler import (
    LeaseRequest,
    LocalScheduler,
    add,
    fits,
    subtract,
)

HERE = b"\x01" * 16
OTHER = b"\x02" * 16
THIRD = b"\x03" * 16


def req(cpu: float = 1.0, strategy=None, no_spill: bool = False, **extra) -> LeaseRequest:
    res = {"CPU": cpu, **extra} if cpu else dict(extra)
    return LeaseRequest(resources=res, placement=dict(res), strategy=strategy, no_spill=no_spill)


def decide(s: LocalScheduler, r: LeaseRequest) -> tuple[str, object]:
    s.submit(r)
    for decision, got, arg in s.schedule():
        if got is r:
            return decision, arg
    assert r in s.queue
    return "queued", None


# --- resource arithmetic ----------------------------------------------------------------


def test_fits_subtract_add():
    have = {"CPU": 2.0, "GPU": 1.0}
    assert fits({"CPU": 2}, have)
    assert fits({"CPU": 0.5, "GPU": 1}, have)
    assert not fits({"CPU": 2.5}, have)
    assert not fits({"custom": 1}, have)
    assert fits({"custom": 0}, have)  # zero amounts need nothing
    assert fits({}, have)
    # Float rounding does not make an exact fit fail.
    left = {"CPU": 1.0}
    for _ in range(10):
        subtract(left, {"CPU": 0.1})
    add(left, {"CPU": 1.0})
    assert fits({"CPU": 1.0}, left)
    have2 = dict(have)
    subtract(have2, {"CPU": 1.5, "custom": 1})
    assert have2 == {"CPU": 0.5, "GPU": 1.0, "custom": -1.0}
    add(have2, {"CPU": 1.5, "custom": 1})
    assert have2 == {"CPU": 2.0, "GPU": 1.0, "custom": 0.0}


# --- grant / wait ---------------------------------------------------------------------------


def test_grant_takes_resources():
    s = LocalScheduler(HERE, {"CPU": 2.0})
    assert decide(s, req()) == ("grant", None)
    assert s.available["CPU"] == 1.0
    assert decide(s, req()) == ("grant", None)
    assert s.available["CPU"] == 0.0


def test_wait_when_busy_then_grant_on_release():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    first = req()
    assert decide(s, first)[0] == "grant"
    second = req()
    assert decide(s, second)[0] == "queued"  # waits, no decision reported
    assert list(s.queue) == [second]
    s.release(first.resources)
    out = s.schedule()
    assert [(d, r) for d, r, _ in out] == [("grant", second)]
    assert not s.queue
    assert s.available["CPU"] == 0.0


def test_queue_order_is_kept():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    running = req()
    decide(s, running)
    waiting = [req() for _ in range(3)]
    for r in waiting:
        s.submit(r)
    assert s.schedule() == []
    s.release(running.resources)
    out = s.schedule()
    assert [r for _, r, _ in out] == [waiting[0]]
    assert list(s.queue) == waiting[1:]


def test_smaller_request_passes_a_blocked_one():
    s = LocalScheduler(HERE, {"CPU": 2.0})
    decide(s, req(1.0))
    big = req(2.0)
    small = req(1.0)
    s.submit(big)
    s.submit(small)
    out = s.schedule()
    assert [(d, r) for d, r, _ in out] == [("grant", small)]
    assert list(s.queue) == [big]


def test_zero_cpu_request_always_fits():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    decide(s, req(1.0))
    r = LeaseRequest(resources={}, placement={})
    assert decide(s, r) == ("grant", None)


def test_cancel_drops_a_queued_request():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    running = req()
    decide(s, running)
    waiting = req()
    s.submit(waiting)
    assert s.cancel(waiting.id) is waiting
    assert s.cancel(waiting.id) is None
    s.release(running.resources)
    assert s.schedule() == []


def test_placement_differs_from_resources():
    # Actors: placement needs 1 CPU free, but the lease holds 0 CPUs.
    s = LocalScheduler(HERE, {"CPU": 1.0})
    r = LeaseRequest(resources={}, placement={"CPU": 1.0})
    assert decide(s, r) == ("grant", None)
    assert s.available["CPU"] == 1.0


# --- release / acquire (blocked get) ----------------------------------------------------------


def test_release_and_acquire_for_blocked_workers():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    parent = req()
    assert decide(s, parent)[0] == "grant"
    child = req()
    assert decide(s, child)[0] == "queued"
    # The parent blocks in get(): its CPU is lent out.
    s.release(parent.resources)
    assert [(d, r) for d, r, _ in s.schedule()] == [("grant", child)]
    # The parent unblocks while the child still runs: it takes its CPU back, past zero.
    s.acquire(parent.resources)
    assert s.available["CPU"] == -1.0
    third = req()
    assert decide(s, third)[0] == "queued"
    s.release(child.resources)
    assert s.schedule() == []  # still at 0
    s.release(parent.resources)
    assert [(d, r) for d, r, _ in s.schedule()] == [("grant", third)]


# --- spillback -----------------------------------------------------------------------------------


def test_spill_to_a_node_with_free_resources():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 4.0}, {"CPU": 4.0}, True)
    assert decide(s, req())[0] == "grant"
    assert decide(s, req()) == ("spill", OTHER)
    # A spilled request leaves the queue and takes nothing here.
    assert not s.queue
    assert s.available["CPU"] == 0.0


def test_local_first_when_it_fits():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    assert decide(s, req()) == ("grant", None)


def test_no_spill_to_busy_or_dead_nodes():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 4.0}, {"CPU": 0.0}, True)  # busy
    s.update_node(THIRD, {"CPU": 4.0}, {"CPU": 4.0}, False)  # dead
    decide(s, req())
    assert decide(s, req())[0] == "queued"  # waits here


def test_spill_picks_at_random_among_the_best_few_nodes():
    """A burst decided on one view spreads over the nodes with most free CPU, not onto one."""
    s = LocalScheduler(HERE, {"CPU": 0.0})
    nodes = [bytes([10 + i]) * 16 for i in range(6)]
    for i, n in enumerate(nodes):
        s.update_node(n, {"CPU": 8.0}, {"CPU": float(i + 1)}, True)  # the last ones are the freest
    picks = Counter(decide(s, req())[1] for _ in range(300))
    assert set(picks) == set(nodes[-3:]), picks
    assert min(picks.values()) > 50, picks


def test_no_spill_flag_keeps_it_here():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 4.0}, {"CPU": 4.0}, True)
    decide(s, req())
    assert decide(s, req(no_spill=True))[0] == "queued"


def test_request_only_another_node_can_ever_fit():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 4.0, "gpu_box": 1.0}, {"CPU": 0.0, "gpu_box": 0.0}, True)
    # Fits OTHER's total (not now), never this node: go there and wait.
    assert decide(s, req(1.0, gpu_box=1.0)) == ("spill", OTHER)


def test_update_node_ignores_self():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(HERE, {"CPU": 100.0}, {"CPU": 100.0}, True)
    assert HERE not in s.cluster


# --- infeasible -------------------------------------------------------------------------------------


def test_infeasible_reported_once_and_kept():
    s = LocalScheduler(HERE, {"CPU": 2.0})
    big = req(8.0)
    assert decide(s, big)[0] == "infeasible"
    assert list(s.queue) == [big]
    # Not reported again on later passes.
    assert s.schedule() == []
    assert list(s.queue) == [big]
    # A node that fits joins: it goes there.
    s.update_node(OTHER, {"CPU": 16.0}, {"CPU": 16.0}, True)
    assert [(d, r, a) for d, r, a in s.schedule()] == [("spill", big, OTHER)]
    assert not s.queue


def test_unknown_custom_resource_is_infeasible():
    s = LocalScheduler(HERE, {"CPU": 2.0})
    s.update_node(OTHER, {"CPU": 2.0}, {"CPU": 2.0}, True)
    assert decide(s, req(1.0, no_such_thing=1.0))[0] == "infeasible"
    assert s.available["CPU"] == 2.0


def test_infeasible_with_no_spill_even_if_another_node_fits():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    assert decide(s, req(4.0, no_spill=True))[0] == "infeasible"


# --- node affinity -------------------------------------------------------------------------------------


def test_hard_affinity_to_another_node_spills_there():
    s = LocalScheduler(HERE, {"CPU": 4.0})
    s.update_node(OTHER, {"CPU": 1.0}, {"CPU": 0.0}, True)
    assert decide(s, req(strategy=["node", OTHER.hex(), False])) == ("spill", OTHER)


def test_hard_affinity_to_this_node():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    strategy = ["node", HERE.hex(), False]
    assert decide(s, req(strategy=strategy)) == ("grant", None)
    # Busy: it waits here rather than going elsewhere.
    assert decide(s, req(strategy=strategy))[0] == "queued"


def test_hard_affinity_to_dead_or_unknown_node_is_unschedulable():
    s = LocalScheduler(HERE, {"CPU": 4.0})
    s.update_node(OTHER, {"CPU": 4.0}, {"CPU": 4.0}, False)
    assert decide(s, req(strategy=["node", OTHER.hex(), False]))[0] == "unschedulable"
    assert decide(s, req(strategy=["node", THIRD.hex(), False]))[0] == "unschedulable"
    assert s.available["CPU"] == 4.0
    assert not s.queue  # dropped: it can never run


def test_soft_affinity_falls_back_when_node_is_gone():
    s = LocalScheduler(HERE, {"CPU": 4.0})
    s.update_node(OTHER, {"CPU": 4.0}, {"CPU": 4.0}, False)
    assert decide(s, req(strategy=["node", OTHER.hex(), True])) == ("grant", None)


def test_soft_affinity_to_this_node_spills_when_it_never_fits():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    assert decide(s, req(4.0, strategy=["node", HERE.hex(), True])) == ("spill", OTHER)


def test_hard_affinity_to_this_node_that_never_fits():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    d, why = decide(s, req(4.0, strategy=["node", HERE.hex(), False]))
    # Ray fails it rather than sending it elsewhere or leaving it pending.
    assert d == "unschedulable"
    assert "never" in why
    assert not s.queue
    assert s.available["CPU"] == 1.0


# --- SPREAD -----------------------------------------------------------------------------------------------


def test_spread_round_robins_over_nodes():
    s = LocalScheduler(HERE, {"CPU": 8.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    s.update_node(THIRD, {"CPU": 8.0}, {"CPU": 8.0}, True)
    where = Counter()
    for _ in range(6):
        d, arg = decide(s, req(strategy="SPREAD"))
        where[HERE if d == "grant" else arg] += 1
    assert where == {HERE: 2, OTHER: 2, THIRD: 2}


def test_spread_skips_dead_and_too_small_nodes():
    s = LocalScheduler(HERE, {"CPU": 8.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, False)
    s.update_node(THIRD, {"CPU": 0.5}, {"CPU": 0.5}, True)
    for _ in range(4):
        assert decide(s, req(strategy="SPREAD")) == ("grant", None)


def test_spread_with_no_spill_stays_here():
    s = LocalScheduler(HERE, {"CPU": 8.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    for _ in range(4):
        assert decide(s, req(strategy="SPREAD", no_spill=True)) == ("grant", None)


# --- BALANCE (actors' default) -------------------------------------------------------------------


def test_balance_takes_turns_over_nodes_with_room():
    s = LocalScheduler(HERE, {"CPU": 8.0})
    s.update_node(OTHER, {"CPU": 8.0}, {"CPU": 8.0}, True)
    s.update_node(THIRD, {"CPU": 8.0}, {"CPU": 0.0}, True)  # busy now: skipped
    where = Counter()
    for _ in range(6):
        d, arg = decide(s, LeaseRequest(resources={}, placement={"CPU": 1.0}, strategy="BALANCE"))
        where[HERE if d == "grant" else arg] += 1
    assert where == {HERE: 3, OTHER: 3}


def test_balance_falls_back_to_the_default_when_no_node_has_room():
    s = LocalScheduler(HERE, {"CPU": 1.0})
    s.update_node(OTHER, {"CPU": 1.0}, {"CPU": 0.0}, True)
    s.available["CPU"] = 0.0
    assert decide(s, req(strategy="BALANCE")) == ("queued", None)
