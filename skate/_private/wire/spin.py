"""Polling before sleeping, and knowing which thread runs a loop.

On this kind of machine a wake-up from sleep costs tens of microseconds per
side; a reply that arrives within ``Config.spin_us`` of the last message is
caught by polling instead, at no wake-up at all.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
import time
from collections.abc import Callable

from skate._private.config import CONFIG

SPIN_S = CONFIG.spin_us / 1e6

_LOOP_THREADS: dict = {}


def loop_thread(loop: asyncio.AbstractEventLoop) -> threading.Thread | None:
    """The thread that runs ``loop`` (learnt the first time it asks), or None."""
    t = _LOOP_THREADS.get(id(loop))
    if t is None:
        try:
            if asyncio.get_running_loop() is loop:
                t = _LOOP_THREADS[id(loop)] = threading.current_thread()
        except RuntimeError:
            return None
    return t


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
