"""The sans-I/O policy core on a fake clock: hand-over order, creation planning, expiry."""

from __future__ import annotations

import random

import pytest

from poolkit._config import PoolConfig
from poolkit._core import CLOSED, IDLE, IN_USE, SERVED, PoolCore, Waiter


def make_core(**options: object) -> PoolCore:
    return PoolCore(PoolConfig(**options), rng=random.Random(7))  # type: ignore[arg-type]


def fill(core: PoolCore, count: int, now: float = 0.0) -> None:
    for i in range(count):
        core.creating += 1  # a creation the shell would have planned
        core.created(f"r{i}", now)


def test_take_returns_most_recent_first_in_lifo_order() -> None:
    core = make_core(max_size=3)
    fill(core, 3)
    first = core.take(1.0)
    second = core.take(1.0)
    assert first is not None and second is not None
    assert core.give_back(second, 2.0) is None
    assert core.give_back(first, 3.0) is None
    taken = core.take(4.0)
    assert taken is first  # returned last, lent first


def test_fifo_order_lends_the_longest_idle() -> None:
    core = make_core(max_size=3, order="fifo")
    fill(core, 2)
    a = core.take(1.0)
    b = core.take(1.0)
    assert a is not None and b is not None
    core.give_back(a, 2.0)
    core.give_back(b, 3.0)
    assert core.take(4.0) is a


def test_returned_entry_goes_to_oldest_waiter_of_highest_priority() -> None:
    core = make_core(max_size=1)
    fill(core, 1)
    entry = core.take(0.0)
    assert entry is not None
    low_early, high, low_late = Waiter(0), Waiter(5), Waiter(0)
    for waiter in (low_early, high, low_late):
        core.enqueue(waiter, 1.0)
    assert core.give_back(entry, 2.0) is high
    assert high.entry is entry and entry.state == IN_USE
    assert core.give_back(entry, 3.0) is low_early
    assert core.give_back(entry, 4.0) is low_late
    assert core.give_back(entry, 5.0) is None
    assert entry.state == IDLE
    assert core.waited_total == 3
    assert core.wait_time_total_s == pytest.approx(1.0 + 2.0 + 3.0)


def test_cancelled_waiter_is_skipped_and_counted_as_timeout() -> None:
    core = make_core(max_size=1)
    fill(core, 1)
    entry = core.take(0.0)
    assert entry is not None
    gone, next_one = Waiter(), Waiter()
    core.enqueue(gone, 0.0)
    core.enqueue(next_one, 0.0)
    assert core.cancel(gone, timed_out=True)
    assert core.waiting == 1 and core.timeouts_total == 1
    assert core.give_back(entry, 1.0) is next_one
    assert not core.cancel(next_one, timed_out=True)  # already served: must take its entry
    assert next_one.state == SERVED


def test_plan_creates_covers_waiters_once_and_respects_max_size() -> None:
    core = make_core(max_size=3)
    waiters = [Waiter() for _ in range(5)]
    for waiter in waiters:
        core.enqueue(waiter, 0.0)
    assert core.plan_creates(0.0) == 3
    assert core.plan_creates(0.0) == 0  # already creating for them; no more room
    _entry, served = core.created("a", 1.0)
    assert served is waiters[0]
    assert core.size + core.creating == 3


def test_no_creation_is_started_that_no_waiter_needs() -> None:
    core = make_core(max_size=5)
    fill(core, 1)
    entry = core.take(0.0)
    assert entry is not None
    waiter = Waiter()
    core.enqueue(waiter, 0.0)
    assert core.plan_creates(0.0) == 1
    # the borrowed entry comes back first and serves the waiter
    assert core.give_back(entry, 1.0) is waiter
    assert core.plan_creates(1.0) == 0
    new_entry, served = core.created("late", 2.0)
    assert served is None and new_entry.state == IDLE  # the late creation goes idle


def test_min_size_is_topped_up() -> None:
    core = make_core(min_size=2, max_size=4)
    assert core.plan_creates(0.0) == 2
    assert core.plan_creates(0.0) == 0


def test_failed_creation_backs_off_exponentially_with_jitter() -> None:
    core = make_core(max_size=2, create_backoff=0.1, create_backoff_max=1.0)
    core.enqueue(Waiter(), 0.0)
    delays = []
    now = 0.0
    for _ in range(6):
        assert core.plan_creates(now) == 1
        delay = core.create_failed(OSError("down"), now)
        delays.append(delay)
        assert core.plan_creates(now + delay / 2) == 0  # inside the backoff window
        now += delay
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for delay, base in zip(delays, nominal, strict=True):
        assert base / 2 <= delay <= base
    assert core.create_errors_total == 6 and core.failures == 6
    assert isinstance(core.last_error, OSError)
    core.plan_creates(now)
    core.created("ok", now)
    assert core.failures == 0 and core.last_error is None


def test_lifetime_has_negative_jitter_up_to_five_percent() -> None:
    core = make_core(max_size=200, max_lifetime=100.0)
    fill(core, 200)
    expiries = [entry.expires_at for entry in core.entries.values()]
    assert all(95.0 <= e <= 100.0 for e in expiries)
    assert max(expiries) - min(expiries) > 3.0  # spread, not all at once


def test_take_retires_expired_entries() -> None:
    core = make_core(max_size=2, max_lifetime=10.0)
    fill(core, 2)
    assert core.take(11.0) is None  # retires the expired entry it met; the shell retries
    assert core.size == 1
    assert core.take(11.0) is None
    assert core.size == 0 and core.closed_lifetime_total == 2
    assert [reason for _, reason in core.drain_trash()] == ["lifetime", "lifetime"]


def test_maintain_closes_idle_past_timeout_but_keeps_min_size() -> None:
    core = make_core(min_size=1, max_size=4, idle_timeout=60.0, max_lifetime=None)
    fill(core, 3)
    core.maintain(30.0)
    assert core.size == 3
    core.maintain(61.0)
    assert core.size == 1 and core.closed_idle_total == 2
    assert all(entry.state == CLOSED for entry, _ in core.drain_trash())


def test_give_back_retires_after_max_uses_and_over_max_size() -> None:
    core = make_core(max_size=2, max_uses=2)
    fill(core, 1)
    entry = core.take(0.0)
    assert entry is not None
    core.give_back(entry, 1.0)
    entry = core.take(2.0)
    assert entry is not None
    core.give_back(entry, 3.0)
    assert core.size == 0 and core.closed_max_uses_total == 1


def test_resize_down_retires_idle_and_later_the_returned() -> None:
    core = make_core(max_size=4)
    fill(core, 4)
    held = [core.take(0.0), core.take(0.0)]
    core.resize(None, 1)
    assert core.size == 2  # the two idle ones went
    for entry in held:
        assert entry is not None
        core.give_back(entry, 1.0)
    assert core.size == 1


def test_resize_rejects_min_above_max() -> None:
    core = make_core(max_size=4)
    with pytest.raises(ValueError, match=r"min_size \(5\) exceeds max_size \(4\)"):
        core.resize(5, None)
    assert core.config.max_size == 4


def test_max_waiting_refuses_extra_waiters() -> None:
    core = make_core(max_size=1, max_waiting=2)
    for _ in range(2):
        assert core.can_wait()
        core.enqueue(Waiter(), 0.0)
    assert not core.can_wait()
    assert core.rejected_total == 1


def test_close_fails_waiters_retires_idle_and_later_returns() -> None:
    core = make_core(max_size=2)
    fill(core, 2)
    held = core.take(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 0.0)
    failed = core.close()
    assert failed == [waiter]
    assert core.waiting == 0 and core.size == 1
    assert held is not None
    assert core.give_back(held, 1.0) is None
    assert core.size == 0 and core.plan_creates(2.0) == 0


def test_leaks_are_reported_once() -> None:
    core = make_core(max_size=2, leak_timeout=5.0)
    fill(core, 1)
    entry = core.take(0.0)
    assert core.maintain(4.0) == []
    assert core.maintain(6.0) == [entry]
    assert core.maintain(60.0) == []
    assert core.leaks_total == 1


def test_health_reports_failing_then_degraded() -> None:
    core = make_core(max_size=2)
    assert core.health(0.0).status == "ok"
    core.enqueue(Waiter(), 0.0)
    core.plan_creates(0.0)
    core.create_failed(ConnectionRefusedError(), 0.0)
    health = core.health(2.0)
    assert health.status == "failing"
    assert any("ConnectionRefusedError" in reason for reason in health.reasons)
    assert any("saturated" in reason for reason in health.reasons)


def test_wait_queue_garbage_is_compacted() -> None:
    core = make_core(max_size=1)
    waiters = [Waiter() for _ in range(500)]
    for waiter in waiters:
        core.enqueue(waiter, 0.0)
    for waiter in waiters[:-1]:
        core.cancel(waiter, timed_out=True)
    assert len(core._heap) < 200
    assert core.waiting == 1


def test_time_left_is_that_of_the_next_waiter_to_serve() -> None:
    core = make_core(max_size=1, acquire_timeout=30.0)
    assert core.time_left(0.0) == 30.0  # nobody waits: a top-up may take the pool's timeout
    first, second = Waiter(0, deadline=5.0), Waiter(0, deadline=2.0)
    core.enqueue(first, 0.0)
    core.enqueue(second, 0.0)
    assert core.time_left(1.0) == 4.0
    core.cancel(first, timed_out=True)
    assert core.time_left(1.0) == 1.0
    assert core.time_left(9.0) == 0.0
