"""The owner's table of objects: their state, waiters and reference counts.

Every object a process owns (it submitted the task or called ``put``) has an
``Entry`` here from creation until nothing refers to it anywhere:

    count = local refs (ObjectRef instances in this process)
          + borrowers (other processes holding it, told us with borrow_add)

Pending tasks and containers keep the ObjectRef instances of what they
carry, so those count as local refs until the task ends or the container
is freed.

When the count reaches zero the entry is dropped and, for objects in shared
memory, the node daemon is told to free the segment.  Refs this process holds
but does not own are counted in ``borrowed``; the first one makes us a
borrower at the owner and the last one ends that.

The table is shared by the user's threads and the I/O thread, so every
change happens under one lock; waking waiters happens outside it.

A garbage-collection pass may run ``ObjectRef.__del__`` at any allocation,
also inside one of this table's locked sections on the thread that holds
the lock.  So the lock is re-entrant, and a release that finds its own
thread inside a locked section is queued and applied right after (``defer``)
instead of changing the table under the section's feet.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

PENDING, INLINE, SHM, ERROR = 0, 1, 2, 3


class Entry:
    """One owned object."""

    __slots__ = (
        "state", "data", "bufs", "node_id", "size", "waiters", "local",
        "borrowers", "retrieved", "contained", "task", "via",
    )

    def __init__(self) -> None:
        self.state = PENDING
        self.data: bytes | None = None
        self.bufs: list = []
        self.node_id: bytes | None = None
        self.size = 0
        self.waiters: list[Callable[[], None]] | None = None
        self.local = 0
        self.borrowers = 0
        self.retrieved = False
        self.contained: list | None = None  # refs this value holds: [(oid, owner)]
        self.task: object = None  # the pending task that makes it (for cancel)
        self.via: object = None  # the connection its value will arrive on, if known


class MemoryStore:
    """Owned objects and borrowed-ref counts of one process."""

    def __init__(
        self,
        on_free: Callable[[bytes, Entry], None],
        on_borrow_change: Callable[[bytes, list, int], None],
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        #: Releases queued by a GC pass inside a locked section (see the module doc).
        self._released: collections.deque[bytes] = collections.deque()
        self._defer = defer
        self.entries: dict[bytes, Entry] = {}
        self.borrowed: dict[bytes, list] = {}  # oid -> [count, owner]
        self.on_free = on_free
        self.on_borrow_change = on_borrow_change
        #: Bumped whenever an object completes; ``wait_any`` sleeps on it.
        self.gen = 0
        self._any: list[threading.Lock] = []

    # --- creation and completion ---------------------------------------------------
    def create(self, oid: bytes) -> Entry:
        """Registers a pending owned object (a task's return)."""
        e = Entry()
        with self.lock:
            self.entries[oid] = e
        return e

    def put_ready(self, oid: bytes, state: int, data: bytes | None, bufs: list, node_id: bytes | None = None, size: int = 0) -> None:
        """Registers an owned object whose value is already known (``put``)."""
        e = Entry()
        e.state, e.data, e.bufs, e.node_id, e.size = state, data, bufs, node_id, size
        with self.lock:
            self.entries[oid] = e

    def complete(self, oid: bytes, state: int, data: bytes | None, bufs: list, node_id: bytes | None = None, size: int = 0, contained: list | None = None) -> bool:
        """Sets the value of a pending object and wakes its waiters."""
        with self.lock:
            e = self.entries.get(oid)
            if e is None or e.state != PENDING:
                return False
            e.state, e.data, e.bufs, e.node_id, e.size, e.contained = state, data, bufs, node_id, size, contained
            e.task = None
            waiters, e.waiters = e.waiters, None
            dead = e.local + e.borrowers == 0
            if dead:
                del self.entries[oid]
            self.gen += 1
            anys = self._any
            if anys:
                self._any = []
        if anys:
            for lk in anys:
                lk.release()
        if waiters:
            for w in waiters:
                w()
        if dead:
            self.on_free(oid, e)
        return True

    def wait_any(self, gen: int, timeout: float | None) -> None:
        """Sleeps until some object completes after ``gen`` was read (or ``timeout``)."""
        lk = threading.Lock()
        lk.acquire()
        with self.lock:
            if self.gen != gen:
                return
            self._any.append(lk)
        if not lk.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            with self.lock:
                if lk in self._any:
                    self._any.remove(lk)

    def poke(self) -> None:
        """Wakes ``wait_any`` sleepers (something they watch changed)."""
        with self.lock:
            self.gen += 1
            anys, self._any = self._any, []
        for lk in anys:
            lk.release()

    def add_waiter(self, oid: bytes, waiter: Callable[[], None]) -> Entry | None:
        """Calls ``waiter`` once ``oid`` is ready; returns the entry if it already is."""
        with self.lock:
            e = self.entries.get(oid)
            if e is None or e.state != PENDING:
                return e
            if e.waiters is None:
                e.waiters = [waiter]
            else:
                e.waiters.append(waiter)
            return None

    def remove_waiter(self, oid: bytes, waiter: Callable[[], None]) -> None:
        """Drops a waiter that is no longer wanted (timeouts)."""
        with self.lock:
            e = self.entries.get(oid)
            if e is not None and e.waiters:
                try:
                    e.waiters.remove(waiter)
                except ValueError:
                    pass

    # --- reference counting ----------------------------------------------------------
    def add_local(self, oid: bytes, owner: list | None) -> None:
        """A new ObjectRef instance for ``oid`` exists in this process."""
        with self.lock:
            e = self.entries.get(oid)
            if e is not None:
                e.local += 1
                return
            b = self.borrowed.get(oid)
            if b is not None:
                b[0] += 1
                return
            self.borrowed[oid] = [1, owner]
            # (under the lock: a ref's borrow and its end reach the core in the order they happened)
            self.on_borrow_change(oid, owner, +1)

    def remove_local(self, oid: bytes) -> None:
        """An ObjectRef instance for ``oid`` was collected (any thread, any time)."""
        if self.lock._is_owned():  # a GC pass inside our own locked section
            self._released.append(oid)
            if self._defer is not None:
                self._defer(self.apply_released)
            return
        if self._released:
            self.apply_released()
        with self.lock:
            e = self.entries.get(oid)
            if e is not None:
                e.local -= 1
                # A pending object is freed when its value arrives (see complete).
                if e.local + e.borrowers > 0 or e.state == PENDING:
                    return
                del self.entries[oid]
            else:
                b = self.borrowed.get(oid)
                if b is None:
                    return
                b[0] -= 1
                if b[0] > 0:
                    return
                del self.borrowed[oid]
                self.on_borrow_change(oid, b[1], -1)  # (under the lock: see add_local)
                return
        self.on_free(oid, e)

    def apply_released(self) -> None:
        """Applies the releases a GC pass queued inside a locked section."""
        while self._released and not self.lock._is_owned():
            try:
                oid = self._released.popleft()
            except IndexError:
                return
            self.remove_local(oid)

    def adjust(self, oid: bytes, borrowers: int = 0) -> bool:
        """Changes an owned object's pin or borrower count; False if not owned here."""
        with self.lock:
            e = self.entries.get(oid)
            if e is None:
                return False
            e.borrowers += borrowers
            if e.local + e.borrowers > 0:
                return True
            del self.entries[oid]
        self.on_free(oid, e)
        return True

    def set_via(self, oids: list, conn: object) -> None:
        """Notes the connection the values of pending ``oids`` will arrive on
        (a thread blocked on them may read it itself)."""
        entries = self.entries
        for oid in oids:
            e = entries.get(oid)
            if e is not None:
                e.via = conn

    def get(self, oid: bytes) -> Entry | None:
        """The entry of an owned object, if any."""
        return self.entries.get(oid)

    def owns(self, oid: bytes) -> bool:
        """True when this process owns ``oid`` and it is still alive."""
        return oid in self.entries
