"""Hypothesis state machine: KeyedPool under max_total against a model (caps, LRU eviction)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolkit import PoolTimeout
from poolkit.keyed import KeyedPool

from helpers import wait_for

KEYS = ("a", "b", "c", "d")
MAX_PER_KEY = 2
MAX_TOTAL = 3


class Res:
    def __init__(self, key: str, n: int) -> None:
        self.key = key
        self.n = n
        self.closed = False


class KeyedModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.live: set[int] = set()
        self.pool: KeyedPool[str, Res] = KeyedPool(
            self.create,
            destroy=self.destroy,
            max_per_key=MAX_PER_KEY,
            max_total=MAX_TOTAL,
            acquire_timeout=5.0,
            check_after_idle=None,
        )
        # model: idle resources per key in return order (LRU first); leases out
        self.idle: dict[str, list[Res]] = {k: [] for k in KEYS}
        self.out: list[Any] = []

    def create(self, key: str) -> Res:
        self.n += 1
        self.live.add(self.n)
        return Res(key, self.n)

    def destroy(self, r: Res) -> None:
        assert not r.closed
        r.closed = True
        self.live.discard(r.n)

    def size(self, key: str | None = None) -> int:
        held = [lease.resource.key for lease in self.out]
        if key is None:
            return len(held) + sum(len(v) for v in self.idle.values())
        return held.count(key) + len(self.idle[key])

    def quiesce(self) -> None:
        def settled() -> bool:
            s = self.pool.stats()
            return s.budget_waiting == 0 and s.creating == 0

        wait_for(settled, timeout=5, what="the timed-out creation to give up")

    @rule(key=st.sampled_from(KEYS))
    def borrow(self, key: str) -> None:
        others_idle = [k for k in KEYS if k != key and self.idle[k]]
        if self.idle[key]:
            expected = self.idle[key].pop()  # LIFO
            lease = self.pool.get(key)
            assert lease.resource is expected
        elif self.size(key) < MAX_PER_KEY and (self.size() < MAX_TOTAL or others_idle):
            victim = None
            if self.size() >= MAX_TOTAL:
                victim_key = min(others_idle, key=lambda k: self.idle[k][0].n_returned)  # type: ignore[attr-defined]
                victim = self.idle[victim_key].pop(0)
            lease = self.pool.get(key)
            assert lease.resource.key == key
            assert not lease.resource.closed
            if victim is not None:
                assert victim.closed, "the least recently used idle resource of another key"
        else:
            with pytest.raises(PoolTimeout):
                self.pool.get(key, timeout=0.02)
            self.quiesce()
            return
        self.out.append(lease)

    @precondition(lambda self: self.out)
    @rule(i=st.integers(0, 100), broken=st.booleans())
    def give_back(self, i: int, broken: bool) -> None:
        lease = self.out.pop(i % len(self.out))
        r = lease.resource
        if broken:
            lease.discard()
            assert r.closed
        else:
            lease.release()
            self.returned = getattr(self, "returned", 0) + 1
            r.n_returned = self.returned  # type: ignore[attr-defined]
            self.idle[r.key].append(r)

    @rule(key=st.sampled_from(KEYS))
    def close_idle(self, key: str) -> None:
        closed = self.pool.close_idle(key, 1)
        if self.idle[key]:
            assert closed == 1
            r = self.idle[key].pop(0)
            assert r.closed
        else:
            assert closed == 0

    @invariant()
    def caps_hold(self) -> None:
        s = self.pool.stats()
        assert len(self.live) == self.size() == s.size <= MAX_TOTAL
        assert s.permits_in_use == s.size + s.creating
        for key in KEYS:
            per = s.per_key.get(key)
            assert (per.size if per else 0) == self.size(key) <= MAX_PER_KEY

    def teardown(self) -> None:
        for lease in self.out:
            lease.release()
        self.pool.close()
        assert not self.live


KeyedModel.TestCase.settings = settings(
    max_examples=20, stateful_step_count=30, deadline=None, derandomize=True
)
test_keyed_pool_model = KeyedModel.TestCase
