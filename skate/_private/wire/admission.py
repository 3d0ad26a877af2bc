"""Admission: how many peers a listener lets try to authenticate at once.

Each listener has one ``Gate``; a connection takes a slot when accepted and
gives it back when it authenticates or closes (``Connection._admit`` /
``_handshake_over``).  Past ``Config.max_pending_handshakes`` a new
connection is closed at once, so peers without the token cannot pin a
daemon's memory and descriptors.
"""

from __future__ import annotations


class Gate:
    """Per listener: how many accepted connections have not authenticated yet."""

    __slots__ = ("cap", "pending", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pending = 0
        self.refused = 0
