"""Admission: how many peers a listener lets try to authenticate at once.

Each listener has one ``Gate``; a connection takes a slot when accepted and
gives it back when it authenticates or closes (``take`` / ``give_back``,
called by ``Connection``).  Past ``Config.max_pending_handshakes`` a new
connection is closed at once, so peers without the token cannot pin a
daemon's memory and descriptors.  ``peer_pid`` tells who is at the other end
of a Unix socket.
"""

from __future__ import annotations

import logging
import socket
import struct

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


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_pid(sock: socket.socket) -> int | None:
    """The process at the other end of a Unix socket (``SO_PEERCRED``: the one
    that connected); None for other sockets or where the kernel does not say."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0] or None
    except OSError:
        return None
