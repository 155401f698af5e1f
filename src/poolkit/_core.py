"""The pool policy, free of I/O: every decision of Pool and AsyncPool is made here.

Theory of operation
-------------------
``PoolCore`` holds the idle entries, the wait queue and every counter. It never locks, awaits,
sleeps, logs or reads the clock: callers pass ``now`` and get decisions back. The thread shell
(``Pool``) calls it with its one lock held; the asyncio shell (``AsyncPool``) calls it from its
event loop, where a call without ``await`` needs no lock. Both shells do the I/O (create, check,
reset, destroy) after the call returns.

Invariants, true after every call:

* ``size == len(idle) + in_use`` and ``size + creating <= max_size`` (after a shrink, ``size``
  may exceed a lowered ``max_size`` until returned resources are retired);
* ``created_total - destroyed_total == size``;
* an entry is in exactly one place: the idle deque (IDLE), one borrower (IN_USE) or nowhere
  (CLOSED, queued in ``trash`` for the shell to destroy);
* ``idle`` is non-empty only while nobody waits: a returned or new entry goes straight to the
  oldest waiter of the highest priority.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from typing import Any

from ._config import PoolConfig
from ._types import Health, PoolStats

__all__ = ["CLOSED", "IDLE", "IN_USE", "Entry", "PoolCore", "Waiter"]

IDLE = 0
IN_USE = 1
CLOSED = 2

WAITING = 0
SERVED = 1
GONE = 2
FAILED = 3

_INF = float("inf")
_ids = itertools.count(1)

#: Why a resource was destroyed -> the PoolStats counter that counts it.
_REASON_COUNTERS = {
    "idle": "closed_idle_total",
    "lifetime": "closed_lifetime_total",
    "broken": "closed_broken_total",
    "check": "check_failed_total",
    "max_uses": "closed_max_uses_total",
    "reset": "closed_reset_total",
}


class Entry:
    """One pooled resource and its bookkeeping."""

    __slots__ = (
        "borrowed_at",
        "created_at",
        "expires_at",
        "id",
        "last_used",
        "leak_reported",
        "resource",
        "stack",
        "state",
        "token",
        "uses",
    )

    def __init__(self, resource: Any, now: float, expires_at: float, token: object) -> None:
        self.resource = resource
        self.id = next(_ids)
        self.state = IDLE
        self.created_at = now
        self.last_used = now
        self.borrowed_at = now
        self.uses = 0
        self.expires_at = expires_at
        self.token = token
        self.stack: str | None = None
        self.leak_reported = False

    def __repr__(self) -> str:
        state = ("idle", "in_use", "closed")[self.state]
        return f"<Entry #{self.id} {state} uses={self.uses}>"


class Waiter:
    """A borrower queued for a resource; shells subclass it with their wake-up mechanism."""

    __slots__ = ("deadline", "enqueued_at", "entry", "priority", "state")

    def __init__(self, priority: int = 0, deadline: float = _INF) -> None:
        self.priority = priority
        self.state = WAITING
        self.entry: Entry | None = None
        self.enqueued_at = 0.0
        self.deadline = deadline

    def wake(self) -> None:
        """Tell the waiting borrower that its state changed (served or failed)."""


class PoolCore:
    """The state and policy of one pool. See the module docstring."""

    def __init__(self, config: PoolConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.closed = False
        self._set_caps()
        self.rng = rng or random.Random()
        self.idle: deque[Entry] = deque()
        self.pop_idle = self.idle.pop if config.order == "lifo" else self.idle.popleft
        self.entries: dict[int, Entry] = {}
        self.size = 0
        self.creating = 0
        self.waiting = 0
        self.trash: list[tuple[Entry, str]] = []
        self._heap: list[tuple[int, int, Waiter]] = []
        self._seq = itertools.count()
        self._garbage = 0
        # backoff after failed creations
        self.failures = 0
        self.next_create_at = 0.0
        self.last_error: BaseException | None = None
        self.waiting_since: float | None = None
        # counters
        self.acquired_total = 0
        self.waited_total = 0
        self.wait_time_total_s = 0.0
        self.timeouts_total = 0
        self.created_total = 0
        self.create_errors_total = 0
        self.destroyed_total = 0
        self.closed_idle_total = 0
        self.closed_lifetime_total = 0
        self.closed_broken_total = 0
        self.check_failed_total = 0
        self.closed_max_uses_total = 0
        self.closed_reset_total = 0
        self.leaks_total = 0
        self.rejected_total = 0
        self.usage_time_total_s = 0.0

    @property
    def in_use(self) -> int:
        """Entries lent right now (every existing entry that is not idle)."""
        return self.size - len(self.idle)

    def _set_caps(self) -> None:
        """Cache the limits checked on every return (the size cap is -1 once closed)."""
        config = self.config
        self._uses_cap: float = float("inf") if config.max_uses is None else config.max_uses
        self._size_cap = -1 if self.closed else config.max_size

    # -- borrowing and returning ----------------------------------------------------------

    def take(self, now: float) -> Entry | None:
        """Lend an idle entry; None when none is idle or the one met had expired.

        An expired entry is retired (into ``trash``) and None returned, so that the shell
        takes its slow path, which destroys it and tries again.
        """
        if self.idle:
            entry = self.pop_idle()
            if entry.expires_at > now:
                entry.state = 1  # IN_USE
                entry.uses += 1
                entry.borrowed_at = now
                self.acquired_total += 1
                return entry
            self._retire(entry, "lifetime")
        return None

    def take_any(self, now: float) -> Entry | None:
        """Lend an idle entry, retiring every expired one met on the way."""
        while self.idle:
            entry = self.take(now)
            if entry is not None:
                return entry
        return None

    def give_back(self, entry: Entry, now: float) -> Waiter | None:
        """Take back an entry returned in good order; return the waiter it was handed to."""
        self.usage_time_total_s += now - entry.borrowed_at
        entry.last_used = now
        # one test for the common case: not expired, not worn out, pool open and not shrunk
        if entry.expires_at > now and entry.uses < self._uses_cap and self.size <= self._size_cap:
            if not self.waiting:
                entry.state = 0  # IDLE
                self.idle.append(entry)
                return None
            return self._hand_over(entry, now)
        if self.closed:
            self._retire(entry, "close")
        elif entry.expires_at <= now:
            self._retire(entry, "lifetime")
        elif entry.uses >= self._uses_cap:
            self._retire(entry, "max_uses")
        else:
            self._retire(entry, "resize")
        return None

    def discard(self, entry: Entry, reason: str, now: float) -> None:
        """Take back a borrowed entry that must be destroyed (broken, failed check or reset)."""
        self.usage_time_total_s += now - entry.borrowed_at
        self._retire(entry, reason)

    def _hand_over(self, entry: Entry, now: float) -> Waiter | None:
        waiter = self._pop_waiter()
        if waiter is None:
            entry.state = IDLE
            self.idle.append(entry)
            return None
        entry.state = IN_USE
        entry.uses += 1
        entry.borrowed_at = now
        self.acquired_total += 1
        self.waited_total += 1
        self.wait_time_total_s += now - waiter.enqueued_at
        waiter.entry = entry
        waiter.state = SERVED
        return waiter

    def _retire(self, entry: Entry, reason: str) -> None:
        entry.state = CLOSED
        self.size -= 1
        self.destroyed_total += 1
        self.entries.pop(entry.id, None)
        counter = _REASON_COUNTERS.get(reason)
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)
        self.trash.append((entry, reason))

    def drain_trash(self) -> list[tuple[Entry, str]]:
        """Hand the retired entries to the shell, which destroys them outside the lock."""
        trash, self.trash = self.trash, []
        return trash

    # -- the wait queue ---------------------------------------------------------------------

    def can_wait(self) -> bool:
        """False when the wait queue is at ``max_waiting`` (the borrower is refused)."""
        limit = self.config.max_waiting
        if limit and self.waiting >= limit:
            self.rejected_total += 1
            return False
        return True

    def enqueue(self, waiter: Waiter, now: float) -> None:
        """Queue a borrower: higher priority first, first come first served within one."""
        waiter.enqueued_at = now
        heapq.heappush(self._heap, (-waiter.priority, next(self._seq), waiter))
        if not self.waiting:
            self.waiting_since = now
        self.waiting += 1

    def _pop_waiter(self) -> Waiter | None:
        heap = self._heap
        while heap:
            waiter = heapq.heappop(heap)[2]
            if waiter.state == WAITING:
                self.waiting -= 1
                if not self.waiting:
                    self.waiting_since = None
                return waiter
            self._garbage -= 1
        return None

    def cancel(self, waiter: Waiter, *, timed_out: bool) -> bool:
        """Withdraw a waiter; False when it was already served (it must then take its entry)."""
        if waiter.state != WAITING:
            return False
        waiter.state = GONE
        self.waiting -= 1
        if not self.waiting:
            self.waiting_since = None
        if timed_out:
            self.timeouts_total += 1
        self._garbage += 1
        if self._garbage > 64 and self._garbage > 2 * self.waiting:
            self._heap = [item for item in self._heap if item[2].state == WAITING]
            heapq.heapify(self._heap)
            self._garbage = 0
        return True

    def time_left(self, now: float) -> float:
        """How long the next waiter to be served can still wait (the pool's timeout if none)."""
        heap = self._heap
        while heap and heap[0][2].state != WAITING:
            heapq.heappop(heap)
            self._garbage -= 1
        if heap:
            return max(heap[0][2].deadline - now, 0.0)
        return self.config.acquire_timeout

    def count_timeout(self) -> None:
        """Count a timeout that happened outside the wait queue (while checking)."""
        self.timeouts_total += 1

    # -- creation ------------------------------------------------------------------------------

    def plan_creates(self, now: float) -> int:
        """How many creations to start now (already counted in ``creating``)."""
        if self.closed or now < self.next_create_at:
            return 0
        config = self.config
        room = config.max_size - self.size - self.creating
        if room <= 0:
            return 0
        need = max(self.waiting - self.creating, config.min_size - self.size - self.creating)
        if need <= 0:
            return 0
        if self.failures:
            need = 1  # while creation fails, probe with one attempt at a time
        count = min(need, room)
        self.creating += count
        return count

    def reserve_warm(self) -> int:
        """Count the creations a warm start needs to reach ``min_size``; return how many."""
        if self.closed:
            return 0
        count = max(self.config.min_size - self.size - self.creating, 0)
        self.creating += count
        return count

    def unreserve(self, count: int) -> None:
        """Give back reserved creations that will not be attempted."""
        self.creating -= count

    def created(
        self, resource: Any, now: float, token: object = None
    ) -> tuple[Entry, Waiter | None]:
        """Take a newly created resource; hand it to a waiter (returned), or keep it idle."""
        self.creating -= 1
        self.created_total += 1
        self.size += 1
        self.failures = 0
        self.next_create_at = 0.0
        self.last_error = None
        lifetime = self.config.max_lifetime
        expires_at = _INF if lifetime is None else now + lifetime * (1.0 - 0.05 * self.rng.random())
        entry = Entry(resource, now, expires_at, token)
        self.entries[entry.id] = entry
        if self.closed:
            self._retire(entry, "close")
            return entry, None
        if self.size > self.config.max_size:
            self._retire(entry, "resize")
            return entry, None
        if self.waiting:
            return entry, self._hand_over(entry, now)
        entry.state = IDLE
        self.idle.append(entry)
        return entry, None

    def create_failed(self, error: BaseException, now: float) -> float:
        """Record a failed creation; return the backoff delay before the next attempt."""
        self.creating -= 1
        self.create_errors_total += 1
        self.failures += 1
        self.last_error = error
        config = self.config
        delay = min(config.create_backoff * 2.0 ** (self.failures - 1), config.create_backoff_max)
        delay *= 0.5 + 0.5 * self.rng.random()  # jitter: spread retries of many processes
        self.next_create_at = now + delay
        return delay

    # -- maintenance -----------------------------------------------------------------------------

    def maintain(self, now: float) -> list[Entry]:
        """Retire idle entries past their idle timeout or lifetime; return newly leaked entries."""
        config = self.config
        idle_timeout = config.idle_timeout
        if self.idle:
            keep: deque[Entry] = deque()
            surplus = self.size - config.min_size
            for entry in self.idle:  # oldest returned first
                if entry.expires_at <= now:
                    self._retire(entry, "lifetime")
                    surplus -= 1
                elif (
                    idle_timeout is not None
                    and surplus > 0
                    and now - entry.last_used >= idle_timeout
                ):
                    self._retire(entry, "idle")
                    surplus -= 1
                else:
                    keep.append(entry)
            if len(keep) != len(self.idle):
                self.idle.clear()
                self.idle.extend(keep)
        leaked: list[Entry] = []
        leak_timeout = config.leak_timeout
        if leak_timeout is not None and self.in_use:
            for entry in self.entries.values():
                if (
                    entry.state == IN_USE
                    and not entry.leak_reported
                    and now - entry.borrowed_at >= leak_timeout
                ):
                    entry.leak_reported = True
                    self.leaks_total += 1
                    leaked.append(entry)
        return leaked

    def reclaim_leaked(self, entry: Entry, now: float) -> bool:
        """A lease was garbage-collected unreleased: free its slot; False if already back."""
        if entry.state != IN_USE:
            return False
        if not entry.leak_reported:
            entry.leak_reported = True
            self.leaks_total += 1
        self.discard(entry, "leak", now)
        return True

    def close_idle(self, count: int | None, reason: str = "evict") -> int:
        """Retire up to ``count`` idle entries (all when None), least recently used first."""
        closed = 0
        while self.idle and (count is None or closed < count):
            self._retire(self.idle.popleft(), reason)
            closed += 1
        return closed

    def oldest_idle_at(self) -> float | None:
        """When the least recently used idle entry was returned, or None."""
        return self.idle[0].last_used if self.idle else None

    def resize(self, min_size: int | None, max_size: int | None) -> None:
        """Change the sizes; idle entries above the new maximum are retired."""
        self.config = self.config.resized(min_size, max_size)
        self._set_caps()
        while self.idle and self.size > self.config.max_size:
            self._retire(self.idle.popleft(), "resize")

    def close(self) -> list[Waiter]:
        """Refuse new borrowers, retire idle entries and return the waiters to fail."""
        self.closed = True
        self._set_caps()
        self.close_idle(None, "close")
        failed: list[Waiter] = []
        while (waiter := self._pop_waiter()) is not None:
            waiter.state = FAILED
            failed.append(waiter)
        self._heap.clear()
        self._garbage = 0
        return failed

    # -- inspection ------------------------------------------------------------------------------

    def borrowed_entries(self) -> list[Entry]:
        """The entries lent right now."""
        return [entry for entry in self.entries.values() if entry.state == IN_USE]

    def stats(self, budget_status: str | None = None) -> PoolStats:
        """A snapshot of gauges and counters."""
        config = self.config
        error = self.last_error
        return PoolStats(
            name=config.name,
            size=self.size,
            idle=len(self.idle),
            in_use=self.in_use,
            creating=self.creating,
            waiting=self.waiting,
            min_size=config.min_size,
            max_size=config.max_size,
            acquired_total=self.acquired_total,
            waited_total=self.waited_total,
            wait_time_total_s=self.wait_time_total_s,
            timeouts_total=self.timeouts_total,
            created_total=self.created_total,
            create_errors_total=self.create_errors_total,
            destroyed_total=self.destroyed_total,
            closed_idle_total=self.closed_idle_total,
            closed_lifetime_total=self.closed_lifetime_total,
            closed_broken_total=self.closed_broken_total,
            check_failed_total=self.check_failed_total,
            leaks_total=self.leaks_total,
            usage_time_total_s=self.usage_time_total_s,
            closed_max_uses_total=self.closed_max_uses_total,
            closed_reset_total=self.closed_reset_total,
            rejected_total=self.rejected_total,
            closed=self.closed,
            budget_status=budget_status,
            last_create_error=None if error is None else type(error).__name__,
        )

    def health(self, now: float, budget_status: str | None = None) -> Health:
        """ok / degraded / failing, with the reasons, for readiness probes."""
        failing: list[str] = []
        degraded: list[str] = []
        name = self.config.name
        if self.closed:
            failing.append(f"pool {name!r} is closed")
        if self.failures:
            error = type(self.last_error).__name__ if self.last_error is not None else "error"
            message = f"{self.failures} creation(s) failed in a row (last: {error})"
            (failing if self.size == 0 else degraded).append(message)
        if self.waiting_since is not None and now - self.waiting_since >= 1.0:
            degraded.append(
                f"saturated: {self.waiting} waiting for {now - self.waiting_since:.1f}s "
                f"with {self.in_use}/{self.config.max_size} in use"
            )
        if self.leaks_total:
            degraded.append(f"{self.leaks_total} leaked resource(s) reported")
        if budget_status == "unavailable":
            (failing if self.size == 0 else degraded).append("budget unavailable")
        elif budget_status == "degraded":
            degraded.append("budget degraded (coordinator unreachable, local fallback)")
        if failing:
            return Health("failing", tuple(failing + degraded))
        if degraded:
            return Health("degraded", tuple(degraded))
        return Health("ok")

    def snapshot(self) -> str:
        """The short live-count text used in reprs and timeout messages."""
        return (
            f"size={self.size}/{self.config.max_size} idle={len(self.idle)} "
            f"in_use={self.in_use} waiting={self.waiting}"
        )
