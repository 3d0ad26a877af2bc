"""Waiting in a compiled graph's process without making another process wait forever.

A process blocks on a channel in two places (``channel.send_all`` writing
to a full socket, ``channel.Reader`` reading a value not yet there); both
wait here, keeping the process's other inbound channels read meanwhile.
"""

from __future__ import annotations

import select
import time
from typing import Any


def remaining(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (a ``time.monotonic`` value; None: no limit)."""
    if deadline is None:
        return None
    return deadline - time.monotonic()


class Inbound:
    """Every inbound channel of one process, kept read while the process waits on another.

    A process of a compiled graph blocks in two places: writing a value to a
    full socket, and reading a value that has not come yet.  Either way, the
    writers of its *other* inbound channels may be blocked on it in turn (a
    value larger than a socket's buffer goes through only as fast as it is
    read), and they may be what the awaited room or value depends on.  So
    every blocking wait (``wait``) also wakes on data from each inbound
    channel and reads it ahead into whole frames (``Reader.drain``).  A
    channel whose writer went away leaves the set (its end of stream is kept
    for its own ``read``), so a wait never spins on it.
    """

    __slots__ = ("readers",)

    def __init__(self, readers: list) -> None:
        self.readers = list(readers)

    def wait(self, fd: int, events: int, deadline: float | None, skip: Any = None) -> None:
        """Waits until ``fd`` has ``events``, an inbound channel has data, or ``deadline``; then drains.

        ``skip``: the reader that waits (it reads its own socket itself).
        One ``poll`` call: a descriptor registered twice keeps one mask only,
        so the masks of a descriptor that is both (a socket carrying both
        directions) are combined.
        """
        masks = {fd: events}
        others = [r for r in self.readers if r is not skip and not r.eof and r.fileno() >= 0]
        for r in others:
            f = r.fileno()
            masks[f] = masks.get(f, 0) | select.POLLIN
        p = select.poll()
        for f, m in masks.items():
            p.register(f, m)
        left = remaining(deadline)
        p.poll(None if left is None else max(int(left * 1000), 1))
        for r in others:
            r.drain()


def wait_for(fd: int, events: int, deadline: float | None, inbound: Inbound | None) -> None:
    """Waits until ``fd`` has ``events`` or ``deadline`` passes, draining ``inbound`` meanwhile (if any)."""
    if inbound is not None:
        inbound.wait(fd, events, deadline)
        return
    p = select.poll()
    p.register(fd, events)
    left = remaining(deadline)
    p.poll(None if left is None else max(int(left * 1000), 1))
