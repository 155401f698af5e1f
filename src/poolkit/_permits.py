"""Sans-I/O ledger of creation permits shared by the sub-pools of a keyed pool (global cap)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["PermitLedger", "Ticket", "choose_victim"]


class Ticket:
    """One request for a permit; ``granted`` flips to True when the ledger hands it a permit.

    ``waker`` belongs to the shell (a ``threading.Event`` or an ``asyncio.Event``); the
    ledger never touches it.
    """

    __slots__ = ("granted", "key", "released", "waker")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.granted = False
        self.released = False
        self.waker: Any = None

    def __repr__(self) -> str:
        state = "released" if self.released else "granted" if self.granted else "waiting"
        return f"<Ticket key={self.key!r} {state}>"


class PermitLedger:
    """Counts permits under ``max_total`` and queues requests first come, first served.

    No locks, no clock, no I/O: the shell calls it under its own lock and acts on the
    tickets it returns. A freed permit goes straight to the oldest waiting ticket of any
    key, so a newcomer never jumps the queue.

    Example::

        ledger = PermitLedger(2)
        a, b, c = ledger.request("a"), ledger.request("b"), ledger.request("c")
        assert a.granted and b.granted and not c.granted
        assert ledger.release(a) is c and c.granted
    """

    __slots__ = ("_queue", "evicting", "evictions_total", "granted_total", "in_use", "max_total")

    def __init__(self, max_total: int) -> None:
        if max_total < 1:
            raise ValueError(f"max_total ({max_total}) must be >= 1")
        self.max_total = max_total
        self.in_use = 0
        self.evicting = 0
        self.evictions_total = 0
        self.granted_total = 0
        self._queue: deque[Ticket] = deque()

    @property
    def waiting(self) -> int:
        """Number of tickets waiting for a permit."""
        return len(self._queue)

    @property
    def free(self) -> int:
        """Number of permits nobody holds."""
        return self.max_total - self.in_use

    def head(self) -> Ticket | None:
        """The oldest waiting ticket, if any."""
        return self._queue[0] if self._queue else None

    def request(self, key: Hashable) -> Ticket:
        """Ask for a permit for ``key``: granted at once if one is free and nobody waits."""
        ticket = Ticket(key)
        if not self._queue and self.in_use < self.max_total:
            self._grant(ticket)
        else:
            self._queue.append(ticket)
        return ticket

    def _grant(self, ticket: Ticket) -> None:
        ticket.granted = True
        self.in_use += 1
        self.granted_total += 1

    def release(self, ticket: Ticket) -> Ticket | None:
        """Give back the permit of ``ticket``; returns the waiting ticket it was handed to.

        A second release of the same ticket is ignored (returns None).
        """
        if not ticket.granted or ticket.released:
            return None
        ticket.released = True
        self.in_use -= 1
        return self._hand_off()

    def _hand_off(self) -> Ticket | None:
        if self._queue and self.in_use < self.max_total:
            nxt = self._queue.popleft()
            self._grant(nxt)
            return nxt
        return None

    def cancel(self, ticket: Ticket) -> Ticket | None:
        """Withdraw a request (timeout, cancellation).

        If the ticket was granted meanwhile its permit is passed on; the ticket that
        received it is returned so the shell can wake it.
        """
        if ticket.granted:
            return self.release(ticket)
        with contextlib.suppress(ValueError):
            self._queue.remove(ticket)
        return None

    def resize(self, max_total: int) -> list[Ticket]:
        """Change the cap; returns the waiting tickets granted by a larger cap."""
        if max_total < 1:
            raise ValueError(f"max_total ({max_total}) must be >= 1")
        self.max_total = max_total
        woken: list[Ticket] = []
        while (t := self._hand_off()) is not None:
            woken.append(t)
        return woken

    def begin_eviction(self) -> bool:
        """Reserve the right to close one idle resource for the waiters.

        Returns False when the evictions already under way cover every waiter, so N
        waiters never close more than N idle resources at a time.
        """
        if self.evicting >= len(self._queue):
            return False
        self.evicting += 1
        return True

    def end_eviction(self, closed: int) -> None:
        """Report the end of an eviction started with :meth:`begin_eviction`."""
        self.evicting -= 1
        self.evictions_total += closed

    def drain(self) -> list[Ticket]:
        """Remove and return every waiting ticket (the pool is closing)."""
        out = list(self._queue)
        self._queue.clear()
        return out


_NO_KEY = object()


def choose_victim(
    candidates: Iterable[tuple[Hashable, float | None]], exclude: object = _NO_KEY
) -> Hashable | None:
    """Pick the key whose least recently used idle resource is the oldest.

    ``candidates`` yields ``(key, oldest_idle_at)``; keys without idle resources
    (``None``) and the ``exclude`` key are skipped. Returns None when nothing is idle.
    """
    best_key: Hashable | None = None
    best_at = 0.0
    found = False
    for key, at in candidates:
        if at is None or key == exclude:
            continue
        if not found or at < best_at:
            best_key, best_at, found = key, at, True
    return best_key if found else None
