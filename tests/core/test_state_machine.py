"""Hypothesis drives the policy core through random sequences and checks its invariants."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolkit._config import PoolConfig
from poolkit._core import CLOSED, IDLE, IN_USE, SERVED, Entry, PoolCore, Waiter


class PoolCoreMachine(RuleBasedStateMachine):
    """A model of borrowers around a PoolCore; the shell's I/O is played by the rules."""

    def __init__(self) -> None:
        super().__init__()
        self.core = PoolCore(
            PoolConfig(
                min_size=1,
                max_size=4,
                max_lifetime=50.0,
                idle_timeout=20.0,
                max_uses=5,
                create_backoff=0.5,
            ),
            rng=random.Random(1),
        )
        self.now = 0.0
        self.held: list[Entry] = []  # entries lent to a borrower of the model
        self.waiters: list[Waiter] = []
        self.pending = 0  # creations the shell would be running
        self.destroyed_ids: set[int] = set()
        self.max_size_seen = 4

    # -- the shell's side effects ------------------------------------------------------------

    def _start_creations(self) -> None:
        self.pending += self.core.plan_creates(self.now)

    def _collect_trash(self) -> None:
        for entry, _reason in self.core.drain_trash():
            assert entry.state == CLOSED
            assert entry.id not in self.destroyed_ids, "destroyed twice"
            self.destroyed_ids.add(entry.id)

    def _served(self, waiter: Waiter | None) -> None:
        if waiter is None:
            return
        assert waiter.state == SERVED and waiter.entry is not None
        self.waiters.remove(waiter)
        self.held.append(waiter.entry)

    # -- rules ---------------------------------------------------------------------------------

    @rule()
    def borrow(self) -> None:
        if self.core.closed:
            return
        entry = self.core.take(self.now)
        if entry is not None:
            self.held.append(entry)
        else:
            waiter = Waiter(priority=len(self.waiters) % 3)
            self.core.enqueue(waiter, self.now)
            self.waiters.append(waiter)
            self._start_creations()
        self._collect_trash()

    @precondition(lambda self: self.held)
    @rule(index=st.integers(min_value=0), broken=st.booleans())
    def give_back(self, index: int, broken: bool) -> None:
        entry = self.held.pop(index % len(self.held))
        if broken:
            self.core.discard(entry, "broken", self.now)
        else:
            self._served(self.core.give_back(entry, self.now))
        self._collect_trash()
        self._start_creations()

    @precondition(lambda self: self.pending)
    @rule(succeed=st.booleans())
    def finish_creation(self, succeed: bool) -> None:
        self.pending -= 1
        if succeed:
            _entry, waiter = self.core.created(object(), self.now)
            self._served(waiter)
        else:
            self.core.create_failed(OSError("refused"), self.now)
        self._collect_trash()

    @precondition(lambda self: self.waiters)
    @rule(index=st.integers(min_value=0))
    def waiter_times_out(self, index: int) -> None:
        waiter = self.waiters.pop(index % len(self.waiters))
        assert self.core.cancel(waiter, timed_out=True)

    @rule(seconds=st.floats(min_value=0.0, max_value=30.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.core.maintain(self.now)
        self._collect_trash()
        self._start_creations()

    @rule(max_size=st.integers(min_value=1, max_value=6))
    def resize(self, max_size: int) -> None:
        self.core.resize(min(self.core.config.min_size, max_size), max_size)
        self.max_size_seen = max(self.max_size_seen, max_size)
        self._collect_trash()
        self._start_creations()

    @precondition(lambda self: not self.core.closed)
    @rule()
    def close(self) -> None:
        failed = self.core.close()
        assert set(map(id, failed)) == set(map(id, self.waiters))
        self.waiters.clear()
        self._collect_trash()

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def counts_add_up(self) -> None:
        core = self.core
        assert core.created_total - core.destroyed_total == core.size
        assert core.size == len(core.idle) + core.in_use
        assert core.in_use == len(self.held)
        assert core.creating == self.pending
        assert core.waiting == len(self.waiters)
        assert core.size + core.creating <= self.max_size_seen

    @invariant()
    def never_lent_twice(self) -> None:
        ids = [entry.id for entry in self.held]
        assert len(ids) == len(set(ids)), "an entry is held by two borrowers"
        idle_ids = {entry.id for entry in self.core.idle}
        assert not idle_ids & set(ids), "a lent entry is also idle"
        assert all(entry.state == IN_USE for entry in self.held)
        assert all(entry.state == IDLE for entry in self.core.idle)
        assert not (idle_ids | set(ids)) & self.destroyed_ids

    @invariant()
    def idle_only_while_nobody_waits(self) -> None:
        assert not (self.core.idle and self.core.waiting)


PoolCoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
TestPoolCore = PoolCoreMachine.TestCase
