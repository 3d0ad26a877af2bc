"""Chaos: actors with ``max_restarts=-1`` and retried calls under random SIGKILLs.

Caller threads keep calling random actors and check every answer; a killer
thread SIGKILLs a random actor's process, then measures how long until that
actor answers again (its time to recover).  With ``max_task_retries=-1`` no
call may be lost.  The short run is part of every test run; the long one is
opt-in (``pytest -m soak``; ``SKATE_SOAK_S`` seconds, ``SKATE_SOAK_ACTORS``
actors, 200 by default).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import skate

SOAK_S = float(os.environ.get("SKATE_SOAK_S", "60"))
SOAK_ACTORS = int(os.environ.get("SKATE_SOAK_ACTORS", "200"))


@skate.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Echo:
    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x


def run_chaos(n_actors: int, seconds: float, callers: int, kill_every_s: float, seed: int = 0) -> dict:
    """Runs the chaos loop; returns what it counted (calls made and lost, restarts, recovery times)."""
    rng = random.Random(seed)
    actors = [Echo.remote() for _ in range(n_actors)]
    pids = skate.get([a.pid.remote() for a in actors], timeout=300)
    stats = {"calls": 0, "lost": 0, "wrong": 0, "restarts": 0, "recover_s": [], "errors": []}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller(k: int) -> None:
        r = random.Random(seed * 1000 + k)
        while time.monotonic() < stop:
            batch = [(r.randrange(n_actors), r.randrange(1 << 30)) for _ in range(r.randrange(1, 20))]
            refs = [actors[i].echo.remote(v) for i, v in batch]
            made = len(refs)
            lost = wrong = 0
            for ref, (_, v) in zip(refs, batch, strict=True):
                try:
                    if skate.get(ref, timeout=120) != v:
                        wrong += 1
                except Exception as e:  # noqa: BLE001 - counted and reported
                    lost += 1
                    with lock:
                        stats["errors"].append(repr(e)[:300])
            with lock:
                stats["calls"] += made
                stats["lost"] += lost
                stats["wrong"] += wrong

    def killer() -> None:
        while time.monotonic() < stop:
            i = rng.randrange(n_actors)
            old = pids[i]
            try:
                os.kill(old, signal.SIGKILL)
            except ProcessLookupError:
                pass
            t0 = time.monotonic()
            new = skate.get(actors[i].pid.remote(), timeout=120)
            with lock:
                stats["recover_s"].append(time.monotonic() - t0)
                stats["restarts"] += 1
            pids[i] = new
            time.sleep(rng.uniform(0, kill_every_s))  # pacing of the chaos, not a wait for a state

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)] + [threading.Thread(target=killer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    assert not any(t.is_alive() for t in threads), "a chaos thread hung"
    rec = sorted(stats["recover_s"]) or [0.0]
    stats["recover_p50_s"] = rec[len(rec) // 2]
    stats["recover_max_s"] = rec[-1]
    return stats


def _report(stats: dict) -> str:
    return (
        f"calls made {stats['calls']}, lost {stats['lost']}, wrong {stats['wrong']}, "
        f"restarts {stats['restarts']}, time to recover p50 {stats['recover_p50_s'] * 1000:.0f} ms, "
        f"max {stats['recover_max_s'] * 1000:.0f} ms"
    )


@pytest.mark.timeout(120)
def test_short_chaos_loses_no_call(ray_start):
    stats = run_chaos(n_actors=6, seconds=3.0, callers=2, kill_every_s=0.2)
    print("chaos:", _report(stats))
    assert stats["calls"] > 0 and stats["restarts"] > 0
    assert stats["lost"] == 0 and stats["wrong"] == 0, (_report(stats), stats["errors"][:5])


@pytest.mark.soak
@pytest.mark.timeout(int(SOAK_S) + 900)
def test_soak_actors_under_random_sigkills():
    skate.init(num_cpus=2)
    try:
        stats = run_chaos(n_actors=SOAK_ACTORS, seconds=SOAK_S, callers=4, kill_every_s=0.1)
    finally:
        skate.shutdown()
    print(f"soak ({SOAK_ACTORS} actors, {SOAK_S:.0f} s):", _report(stats))
    assert stats["restarts"] > 0
    assert stats["lost"] == 0 and stats["wrong"] == 0, (_report(stats), stats["errors"][:5])
