"""Admission: how many peers a listener lets try to authenticate at once.

Each listener has one ``Gate``; a connection takes a slot when accepted and
gives it back when it authenticates or closes (``take`` / ``give_back``,
called by ``Connection``).  Past ``Config.max_pending_handshakes`` a new
connection is closed at once, so peers without the token cannot pin a
daemon's memory and descriptors.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Gate:
    """Per listener: how many accepted connections have not authenticated yet."""

    __slots__ = ("cap", "pending", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pending = 0
        self.refused = 0

    def take(self) -> bool:
        """Takes a slot for a new connection; False (and counted) past the cap."""
        if self.pending >= self.cap:
            self.refused += 1
            if self.refused == 1:
                log.warning("more than %d connections waiting to authenticate: closing new ones", self.cap)
            return False
        self.pending += 1
        return True

    def give_back(self) -> None:
        """A connection that took a slot authenticated or closed."""
        self.pending -= 1
