"""Polling before sleeping, and reading on after a request.

On this kind of machine a wake-up from sleep costs tens of microseconds per
side; a reply that arrives within ``Config.spin_us`` of the last message is
caught by polling instead, at no wake-up at all.  A worker's execution loop
goes one step further (``ReadOn``): after it answered a request, it reads the
same connection on, in the handler's thread, while the next request follows
within that window and nothing else is ready, so a caller's loop of sync
calls costs no pass through the event loop per call::

    request -> loop: select, transport read -> Connection.buffer_updated -> handler -> reply
                                                   `-> ReadOn.run: poll, read_some -> handler -> reply ...
                                                       (back to the loop when idle for spin_us, when
                                                        another descriptor, callback or timer is ready,
                                                        or after budget_s)
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable
from typing import Any

from skate._private.config import CONFIG

SPIN_S = CONFIG.spin_us / 1e6


class SpinningSelector(selectors.EpollSelector):
    """An epoll selector that, right after handling events, polls for a little
    while (``Config.spin_us``) before it sleeps.

    For an execution loop that answers one call at a time, the next call of
    a caller in a loop arrives soon after the reply: caught while polling, it
    costs no wake-up from sleep.  An idle loop polls once per message.
    """

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._busy = False
        self._on_sleep = on_sleep  # called before each wait that may sleep

    def ready_now(self) -> list[tuple[int, int]]:
        """``(fd, events)`` of each registered descriptor ready now (no wait)."""
        return self._selector.poll(0)  # the epoll object (EpollSelector's)

    def select(self, timeout: float | None = None) -> list:
        if self._busy and SPIN_S and (timeout is None or timeout > 0):
            poll = super().select
            end = time.perf_counter() + SPIN_S
            while True:
                ready = poll(0)
                if ready:
                    return ready
                if time.perf_counter() >= end:
                    break
                os.sched_yield()
        if self._on_sleep is not None and (timeout is None or timeout > 0):
            self._on_sleep()
        ready = super().select(timeout)
        self._busy = bool(ready)
        return ready


class SpinningLoop(asyncio.SelectorEventLoop):
    """An event loop on a ``SpinningSelector`` that can tell whether callbacks wait to run."""

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.selector = SpinningSelector(on_sleep)
        super().__init__(self.selector)

    def has_work(self) -> bool:
        """Callbacks wait for the loop's next pass: ready ones (``call_soon``) or
        timers that are due (``call_later``)."""
        # asyncio's queue of ready handles and heap of timers (base class attributes)
        return bool(self._ready) or bool(self._scheduled) and self._scheduled[0].when() <= self.time()


class ReadOn:
    """Reads a connection on after a request, in the loop's thread (see the module's
    docstring); ``gate.serves_inline`` says whether requests are still handled
    where they arrive (a sync actor or a task worker, not a threaded or async
    actor): an attribute, not a call, as it is read twice per request."""

    def __init__(
        self, loop: SpinningLoop, gate: Any, budget_s: float = 0.002, spin_s: float = SPIN_S
    ) -> None:
        """``budget_s``: the longest it reads on at a time; ``spin_s``: how long it
        waits for the next request (``Config.spin_us``)."""
        self.loop = loop
        self.gate = gate
        self.budget_s = budget_s
        self.spin_s = spin_s
        self.active = False  # reading on now (a handler that runs sees True)

    def run(self, conn: Any) -> None:
        """After ``conn`` handled what it read (its ``buffer_updated``; loop thread)."""
        loop = self.loop
        if self.active or not self.spin_s or not conn.authed or not self.gate.serves_inline or loop.has_work():
            return
        self.active = True
        try:
            ready_now = loop.selector.ready_now
            fd = conn.fd
            clock = time.perf_counter
            start = last = clock()
            while not conn.closed:
                ready = ready_now()
                if ready:
                    if len(ready) > 1 or ready[0][0] != fd:
                        return  # something else waits for the loop
                    if conn.read_some() < 0 or loop.has_work() or not self.gate.serves_inline:
                        return  # (a handler that hands work on schedules it: back to the loop)
                    last = clock()
                    if last - start > self.budget_s:
                        return  # a caller that keeps requests queued still lets the loop pass
                    continue
                now = clock()
                if now - last > self.spin_s or now - start > self.budget_s:
                    return
                os.sched_yield()
        finally:
            self.active = False
