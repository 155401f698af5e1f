"""The thread-safe Pool: borrowing, returning, faults, lifecycle, events and leaks."""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

import pytest

import poolkit
from poolkit import (
    Factory,
    NullPool,
    Pool,
    PoolClosed,
    PoolEvent,
    PoolFull,
    PoolTimeout,
    ReleaseError,
    ResourceCreationError,
    ResourceInfo,
)

from conftest import Thing, Things
from helpers import FakeClock, wait_for


def make_pool(things: Things, **options: Any) -> Pool[Thing]:
    options.setdefault("acquire_timeout", 5.0)
    return Pool(things.create, destroy=things.destroy, reset=things.reset, **options)


def start_borrower(pool: Pool[Thing], results: list[Any], **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            with pool.acquire(**kw) as thing:
                results.append(thing)
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_resources_are_reused_and_counted(things: Things) -> None:
    pool = make_pool(things, max_size=2)
    with pool.acquire() as a:
        pass
    with pool.acquire() as b:
        assert b is a
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use, stats.acquired_total) == (1, 1, 0, 2)
    assert stats.created_total == 1 and len(things.created) == 1
    assert "size=1/2 idle=1 in_use=0 waiting=0" in repr(pool)
    pool.close()
    assert things.destroyed == [a] and pool.stats().size == 0


def test_factory_subclass_and_keyword_override() -> None:
    class Numbers(Factory[list[int]]):
        def create(self) -> list[int]:
            return [1]

        def reset(self, resource: list[int]) -> None:
            resource.clear()

    resets: list[list[int]] = []
    pool = Pool(Numbers(), reset=resets.append, max_size=1)
    with pool.acquire() as numbers:
        assert numbers == [1]
    assert resets == [[1]]  # the keyword hook replaced Factory.reset
    pool.close()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"min_size": 5, "max_size": 3}, ValueError, r"min_size \(5\) exceeds max_size \(3\)"),
        ({"max_size": 0}, ValueError, r"max_size \(0\) must be >= 1"),
        ({"min_size": -1}, ValueError, r"min_size \(-1\) must be >= 0"),
        ({"acquire_timeout": -2}, ValueError, r"acquire_timeout \(-2\) must be >= 0"),
        ({"order": "random"}, ValueError, r"order must be 'lifo' or 'fifo', not 'random'"),
        ({"max_size": "10"}, TypeError, r"max_size must be an int, not str"),
        ({"idle_timeout": float("nan")}, ValueError, r"idle_timeout must be a number"),
        ({"max_uses": 0}, ValueError, r"max_uses \(0\) must be >= 1"),
    ],
)
def test_bad_options_are_refused_with_their_values(
    things: Things, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_pool(things, **options)


def test_a_non_callable_create_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a create\\(\\) callable or a Factory"):
        Pool(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="destroy must be callable"):
        Pool(object, destroy="close")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a create"):
        Pool()


def test_negative_acquire_timeout_is_refused(things: Things) -> None:
    pool = make_pool(things)
    with pytest.raises(ValueError, match=r"timeout \(-1\) must be >= 0"):
        pool.acquire(timeout=-1)
    assert pool.stats().in_use == 0
    pool.close()


def test_broken_resource_is_destroyed_and_ordinary_error_returns_it(things: Things) -> None:
    pool = make_pool(things, max_size=2)
    with pytest.raises(ValueError), pool.acquire() as first:
        raise ValueError("bad input, the resource is fine")
    assert pool.stats().idle == 1 and not first.closed
    with pytest.raises(ConnectionResetError), pool.acquire() as again:
        assert again is first
        raise ConnectionResetError("peer gone")
    assert first.closed
    stats = pool.stats()
    assert stats.size == 0 and stats.closed_broken_total == 1
    pool.close()


def test_a_timeout_of_another_pool_does_not_break_the_resource(things: Things) -> None:
    pool = make_pool(things, max_size=1)
    with pytest.raises(PoolTimeout), pool.acquire() as thing:
        raise PoolTimeout("from elsewhere")
    assert not thing.closed and pool.stats().idle == 1
    pool.close()


def test_custom_is_broken_sees_clean_exits_too(things: Things) -> None:
    seen: list[BaseException | None] = []

    def is_broken(thing: Thing, exc: BaseException | None) -> bool:
        seen.append(exc)
        return thing.dirty

    pool = make_pool(things, is_broken=is_broken)
    with pool.acquire() as thing:
        thing.dirty = True
    assert seen == [None] and thing.closed
    pool.close()


def test_failing_reset_destroys_the_resource(things: Things) -> None:
    def reset(thing: Thing) -> None:
        raise RuntimeError("cannot reset")

    pool = Pool(things.create, destroy=things.destroy, reset=reset)
    with pool.acquire() as thing:
        pass
    assert thing.closed and pool.stats().closed_reset_total == 1
    pool.close()


def test_check_runs_only_after_the_idle_threshold(things: Things) -> None:
    clock = FakeClock()
    checked: list[ResourceInfo] = []

    def check(thing: Thing, info: ResourceInfo) -> bool:
        checked.append(info)
        return not thing.dirty

    pool = Pool(things.create, destroy=things.destroy, check=check, clock=clock)
    with pool.acquire() as first:
        pass
    clock.advance(0.2)
    with pool.acquire():
        pass
    assert checked == []  # used 0.2 s ago: within the bypass window
    clock.advance(1.0)
    first.dirty = True
    with pool.acquire() as second:
        assert second is not first  # failed its check: destroyed, a new one was made
    assert len(checked) == 1 and checked[0].idle_s == pytest.approx(1.0)
    assert checked[0].uses == 3 and checked[0].age_s == pytest.approx(1.2)
    assert first.closed and pool.stats().check_failed_total == 1
    pool.close()


def test_check_after_idle_zero_checks_always_and_none_never(things: Things) -> None:
    calls: list[int] = []
    always = Pool(things.create, check=lambda t, i: calls.append(1) or True, check_after_idle=0)
    never = Pool(things.create, check=lambda t, i: calls.append(2) or True, check_after_idle=None)
    for pool in (always, never):
        for _ in range(3):
            with pool.acquire():
                pass
        pool.close()
    assert calls == [1, 1]  # the first borrow got a fresh resource, needing no check


def test_timeout_names_the_pool_and_carries_the_creation_error(things: Things) -> None:
    things.fail_forever = True
    pool = make_pool(things, name="orders-db", max_size=2)
    with pytest.raises(PoolTimeout) as caught:
        pool.acquire(timeout=0.2)
    error = caught.value
    assert isinstance(error, TimeoutError) and error.pool == "orders-db"
    assert "orders-db" in str(error) and "size=0/2" in str(error)
    assert error.phase == "create"
    assert isinstance(error.__cause__, ConnectionRefusedError)
    stats = pool.stats()
    assert stats.timeouts_total == 1 and stats.create_errors_total >= 1
    assert stats.waiting == 0 and stats.last_create_error == "ConnectionRefusedError"
    assert pool.health().status == "failing"
    pool.close()


def test_pool_full_when_the_wait_queue_is_at_max_waiting(things: Things) -> None:
    pool = make_pool(things, max_size=1, max_waiting=1)
    lease = pool.get()
    results: list[Any] = []
    waiter = start_borrower(pool, results)
    wait_for(lambda: pool.stats().waiting == 1)
    with pytest.raises(PoolFull, match="max_waiting=1"):
        pool.acquire(timeout=1.0)
    lease.release()
    waiter.join()
    assert results == [lease.resource]
    assert pool.stats().rejected_total == 1
    pool.close()


def test_release_serves_waiters_by_priority_then_arrival(things: Things) -> None:
    pool = make_pool(things, max_size=1)
    lease = pool.get()
    order: list[str] = []

    def borrower(label: str, priority: int) -> threading.Thread:
        def run() -> None:
            with pool.acquire(priority=priority):
                order.append(label)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = []
    for count, (label, priority) in enumerate(
        [("low-1", 0), ("low-2", 0), ("high", 9), ("low-3", 0)], start=1
    ):
        threads.append(borrower(label, priority))
        wait_for(lambda count=count: pool.stats().waiting == count)
    lease.release()
    for thread in threads:
        thread.join()
    assert order == ["high", "low-1", "low-2", "low-3"]
    assert pool.stats().waited_total == 5  # four queued, and the first waited for creation
    pool.close()


def test_a_returned_resource_serves_a_waiter_while_creation_is_slow(things: Things) -> None:
    gate = threading.Event()
    pool = make_pool(things, max_size=3)
    lease = pool.get()
    things.gate = gate  # the next creation hangs until the gate opens
    results: list[Any] = []
    waiter = start_borrower(pool, results)
    wait_for(lambda: pool.stats().creating == 1)
    lease.release()
    waiter.join()
    assert results == [lease.resource]  # served by the return, not the slow creation
    gate.set()
    wait_for(lambda: pool.stats().creating == 0)
    stats = pool.stats()
    assert stats.size == 2 and stats.idle == 2  # the late creation went idle
    pool.close()


def test_creation_outliving_its_waiter_finishes_idle(things: Things) -> None:
    gate = threading.Event()
    things.gate = gate
    pool = make_pool(things, max_size=2)
    with pytest.raises(PoolTimeout) as caught:
        pool.acquire(timeout=0.05)
    assert caught.value.phase == "wait"
    gate.set()
    wait_for(lambda: pool.stats().idle == 1)
    assert pool.stats().size == 1
    pool.close()


def test_failed_creation_is_retried_for_a_waiter(things: Things) -> None:
    things.fail_next = 3
    pool = make_pool(things, max_size=1)
    with pool.acquire(timeout=5.0) as thing:
        assert thing.id == 1
    assert pool.stats().create_errors_total == 3
    pool.close()


def test_open_warms_up_and_fails_when_nothing_can_be_made(things: Things) -> None:
    pool = make_pool(things, min_size=3, max_size=5)
    pool.open()
    assert pool.stats().idle == 3
    pool.close()
    broken = Things(fail_forever=True)
    cold = make_pool(broken, min_size=2)
    with pytest.raises(ResourceCreationError) as caught:
        cold.open(wait=True)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    cold.open(wait=False)  # does not raise; keeps trying in the background
    cold.close()


def test_open_wait_false_fills_in_the_background(things: Things) -> None:
    with make_pool(things, min_size=2) as warm:
        assert warm.stats().size == 2
    pool = make_pool(things, min_size=2)
    pool.open(wait=False)
    wait_for(lambda: pool.stats().size == 2)
    pool.close()


def test_maintenance_closes_idle_and_expired_and_tops_up(things: Things) -> None:
    clock = FakeClock()
    pool = make_pool(things, min_size=1, max_size=4, idle_timeout=60, max_lifetime=600, clock=clock)
    leases = [pool.get() for _ in range(3)]
    for lease in leases:
        lease.release()
    clock.advance(61)
    pool.maintain()
    stats = pool.stats()
    assert stats.size == 1 and stats.closed_idle_total == 2
    clock.advance(600)
    pool.maintain()
    wait_for(lambda: pool.stats().size == 1 and pool.stats().closed_lifetime_total == 1)
    assert len(things.created) == 4  # the expired one was replaced to keep min_size
    pool.close()


def test_max_uses_retires_a_resource(things: Things) -> None:
    pool = make_pool(things, max_uses=2)
    seen = []
    for _ in range(4):
        with pool.acquire() as thing:
            seen.append(thing.id)
    assert seen == [1, 1, 2, 2]
    pool.close()


def test_resize_at_run_time(things: Things) -> None:
    pool = make_pool(things, max_size=1)
    lease = pool.get()
    results: list[Any] = []
    waiter = start_borrower(pool, results)
    wait_for(lambda: pool.stats().waiting == 1)
    pool.resize(max_size=2)  # room for one more: the waiter gets a new resource
    waiter.join()
    assert len(results) == 1 and results[0] is not lease.resource
    pool.resize(max_size=1)
    lease.release()
    assert pool.stats().size == 1
    with pytest.raises(ValueError, match=r"min_size \(3\) exceeds max_size \(1\)"):
        pool.resize(min_size=3)
    pool.close()


def test_close_fails_waiters_and_destroys_returns(things: Things) -> None:
    pool = make_pool(things, max_size=1)
    lease = pool.get()
    results: list[Any] = []
    waiter = start_borrower(pool, results)
    wait_for(lambda: pool.stats().waiting == 1)
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 5.0})
    closer.start()
    waiter.join()
    assert isinstance(results[0], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.acquire()
    lease.release()  # quietly destroyed
    closer.join()
    assert lease.resource.closed and pool.stats().size == 0
    pool.close()  # a second close does nothing
    assert not [
        t for t in threading.enumerate() if t.name.startswith("poolkit-") and pool.name in t.name
    ]


def test_double_and_foreign_release_raise_and_change_nothing(things: Things) -> None:
    pool = make_pool(things)
    other = make_pool(Things())
    lease = pool.get()
    with pytest.raises(ReleaseError, match="not lent by pool"):
        other.release(lease)
    before = pool.stats()
    lease.release()
    after = pool.stats()
    with pytest.raises(ReleaseError, match="already released"):
        lease.release()
    with pytest.raises(ReleaseError):
        lease.discard()
    assert pool.stats() == after and after.in_use == before.in_use - 1
    assert other.stats().acquired_total == 0
    pool.close()
    other.close()


def test_events_are_emitted_and_listener_errors_are_logged(
    things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(things, max_size=1)
    events: list[PoolEvent] = []
    for kind in ("create", "acquire", "release", "destroy", "timeout"):
        pool.on(kind, events.append)

    def broken_listener(event: PoolEvent) -> None:
        raise RuntimeError("listener bug")

    pool.on("acquire", broken_listener)
    with caplog.at_level(logging.ERROR, logger="poolkit"):
        lease = pool.get()
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.01)
        lease.discard()
    kinds = [event.kind for event in events]
    assert kinds == ["create", "acquire", "timeout", "release", "destroy"]
    assert events[-1].reason == "broken" and events[0].duration_s is not None
    assert all(event.pool == pool.name for event in events)
    assert "listener bug" in caplog.text
    with pytest.raises(ValueError, match="unknown event kind 'borrow'"):
        pool.on("borrow", events.append)
    pool.close()


def test_leak_timeout_reports_once_with_the_borrow_site(
    things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    pool = make_pool(things, max_size=1, leak_timeout=10, clock=clock)
    leaks: list[PoolEvent] = []
    pool.on("leak", leaks.append)

    def forgetful_borrower() -> poolkit.Lease[Thing]:
        return pool.get()

    lease = forgetful_borrower()
    clock.advance(11)
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        pool.maintain()
        pool.maintain()
    assert len(leaks) == 1 and pool.stats().leaks_total == 1
    assert leaks[0].stack is not None and "forgetful_borrower" in leaks[0].stack
    assert "forgetful_borrower" in caplog.text
    with pytest.raises(PoolTimeout) as caught:
        pool.acquire(timeout=0)
    assert "forgetful_borrower" in str(caught.value)  # the holders' borrow sites
    lease.release()
    pool.close()


def test_garbage_collected_lease_gives_its_slot_back(things: Things) -> None:
    pool = make_pool(things, max_size=1)
    leaks: list[PoolEvent] = []
    pool.on("leak", leaks.append)
    lease = pool.get()
    leaked_thing = lease.resource
    del lease
    gc.collect()
    with pool.acquire(timeout=5) as thing:  # the maintenance thread reclaims the slot
        assert thing is not leaked_thing
    assert leaked_thing.closed and pool.stats().leaks_total == 1 and len(leaks) == 1
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_starts_empty_and_leaves_the_parent_alone(things: Things) -> None:
    pool = make_pool(things, max_size=4)
    held = pool.get()
    with pool.acquire():
        pass
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            fresh = pool.stats().size == 0
            with pool.acquire(timeout=5) as thing:
                new_id = thing.id
            untouched = not held.resource.closed and not any(t.closed for t in things.created[:2])
            os.write(write_end, f"{fresh} {new_id} {untouched}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "True 3 True"  # empty pool, a resource of its own, parent's untouched
    assert pool.stats().size == 2 and not held.resource.closed
    held.release()
    pool.close()


def test_budget_permits_are_taken_per_creation_and_given_back(things: Things) -> None:
    class CountingBudget:
        def __init__(self) -> None:
            self.out = 0
            self.tokens = 0

        def acquire(self, timeout: float | None) -> object:
            if self.out >= 1:
                raise PoolTimeout("budget exhausted")
            self.out += 1
            self.tokens += 1
            return self.tokens

        def release(self, token: object) -> None:
            self.out -= 1

        def status(self) -> str:
            return "ok"

    budget = CountingBudget()
    pool = make_pool(things, max_size=3, budget=budget)
    lease = pool.get()
    with pytest.raises(PoolTimeout) as caught:
        pool.acquire(timeout=0.2)
    assert "budget exhausted" in str(caught.value.__cause__)
    lease.release()
    for _ in range(100):
        with pool.acquire():
            pass  # reuse takes no permit
    assert budget.tokens == 1
    pool.get().discard()
    assert budget.out == 0 and pool.stats().budget_status == "ok"
    pool.close()


def test_null_pool_creates_per_borrow_and_destroys_on_return(things: Things) -> None:
    pool = NullPool(things.create, destroy=things.destroy, max_size=2)
    for _ in range(3):
        with pool.acquire() as thing:
            assert not thing.closed
    assert len(things.created) == 3 and len(things.destroyed) == 3
    with pytest.raises(ValueError, match="min_size cannot be set"):
        NullPool(things.create, min_size=2)
    pool.close()


def test_background_maintenance_does_not_keep_a_forgotten_pool_alive(things: Things) -> None:
    import weakref

    pool = make_pool(things, min_size=1)
    pool.open()  # registers with the shared maintenance thread
    with pool.acquire():
        pass
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None  # the scheduler holds pools weakly: a dropped pool can go


def test_a_creation_interrupted_after_its_permit_gives_the_permit_back(things: Things) -> None:
    released: list[object] = []

    class OnePermit:
        def acquire(self, timeout: float | None) -> object:
            return "permit"

        def release(self, token: object) -> None:
            released.append(token)

        def status(self) -> str:
            return "ok"

    def interrupted() -> Thing:
        raise KeyboardInterrupt

    pool = Pool(interrupted, budget=OnePermit(), min_size=1)
    with pytest.raises(KeyboardInterrupt):
        pool.open(wait=True)
    assert released == ["permit"]
    stats = pool.stats()
    assert stats.creating == 0 and stats.size == 0
    pool.close()
