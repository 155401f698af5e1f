"""Differential test: the Lua scripts on real Redis against a pure-Python model of the budget.

Random acquire / release / renew / data-loss sequences over 3 holder processes with
``min_per_process`` and ``max_per_process``; after every step the grant decisions and the
server's holder set and per-process counts must equal the model's.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolkit.cluster import BudgetExhausted, BudgetToken, RedisBudget

from .conftest import SHARED_REDIS

pytestmark = pytest.mark.redis

LIMIT, MIN, MAX, PROCS = 5, 1, 3, 3


class BudgetModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"model-{uuid.uuid4().hex[:10]}"
        self.r = redis.Redis.from_url(SHARED_REDIS, socket_timeout=5)
        self.b = [
            RedisBudget(
                SHARED_REDIS,
                self.name,
                LIMIT,
                lease_ttl=60,
                restart_quiet=0,
                min_per_process=MIN,
                max_per_process=MAX,
            )
            for _ in range(PROCS)
        ]
        for b in self.b:
            b._stop.set()  # no background renewer: the rules drive renew()
        self.local: list[list[BudgetToken]] = [[] for _ in range(PROCS)]
        self.server: list[set[str]] = [set() for _ in range(PROCS)]  # members Redis has
        self.alive: set[int] = set()  # processes with a heartbeat on the server

    def _refusal(self, p: int) -> str | None:
        mine = len(self.server[p])
        total = sum(len(s) for s in self.server)
        if len(self.local[p]) >= MAX:
            return "max"  # checked locally, before Redis
        if mine >= MAX:
            return "max"
        if total >= LIMIT:
            return "full"
        if mine >= MIN:
            reserved = sum(max(0, MIN - len(self.server[q])) for q in self.alive if q != p)
            if total + reserved >= LIMIT:
                return "reserved"
        return None

    @rule(p=st.integers(0, PROCS - 1))
    def acquire(self, p: int) -> None:
        expected = self._refusal(p)
        if expected != "max" or len(self.local[p]) < MAX:
            self.alive.add(p)  # the script heartbeats even when it refuses
        try:
            tok = self.b[p].acquire(0)
        except BudgetExhausted as exc:
            assert exc.reason == expected, (exc.reason, expected)
            return
        assert expected is None, f"granted, model expected refusal {expected!r}"
        self.local[p].append(tok)
        self.server[p].add(tok.member)

    @rule(p=st.integers(0, PROCS - 1), i=st.integers(0, MAX - 1))
    def release(self, p: int, i: int) -> None:
        if not self.local[p]:
            return
        tok = self.local[p].pop(i % len(self.local[p]))
        self.b[p].release(tok)
        self.server[p].discard(tok.member)

    @rule(p=st.integers(0, PROCS - 1))
    def renew(self, p: int) -> None:
        self.b[p].renew()
        self.alive.add(p)
        readded = {t.member for t in self.local[p]} - self.server[p]
        self.server[p] |= readded

    @precondition(lambda self: any(self.local))
    @rule()
    def lose_data(self) -> None:
        keys = list(self.r.scan_iter(match=f"{{poolkit:budget:{self.name}}}:*"))
        if keys:
            self.r.delete(*keys)
        self.server = [set() for _ in range(PROCS)]
        self.alive = set()

    @invariant()
    def server_matches_model(self) -> None:
        tag = f"{{poolkit:budget:{self.name}}}"
        members = {m.decode() for m in self.r.zrange(f"{tag}:holders", 0, -1)}
        assert members == set().union(*self.server)
        counts = {k.decode(): int(v) for k, v in self.r.hgetall(f"{tag}:counts").items()}
        want = {self.b[p].process_id: len(s) for p, s in enumerate(self.server) if s}
        assert counts == want

    def teardown(self) -> None:
        for b in self.b:
            b.close()
        keys = list(self.r.scan_iter(match=f"{{poolkit:budget:{self.name}}}:*"))
        if keys:
            self.r.delete(*keys)
        self.r.close()


TestBudgetModel = BudgetModel.TestCase
TestBudgetModel.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
