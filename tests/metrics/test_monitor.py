"""PoolMonitor's policy, driven by hand with ``tick(now)``; its thread, briefly."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

import pytest

import poolkit
from poolkit.metrics import PoolMonitor

from helpers import FakeClock, wait_for

MakePool = Callable[..., poolkit.Pool[sqlite3.Connection]]
LOGGER = "poolkit.monitor"


def _messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and (level is None or r.levelno == level)
    ]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poolkit")


def test_summary_every_interval_with_deltas(caplog, make_pool: MakePool) -> None:
    pool = make_pool(name="db", max_size=4)
    monitor = PoolMonitor(pool, interval=60.0)
    monitor.tick(0.0)
    first = _messages(caplog, logging.INFO)
    assert len(first) == 1
    assert first[0].startswith("pool 'db': size=0/4 idle=0 in_use=0 waiting=0 | since start:")
    for _ in range(3):
        with pool.acquire():
            pass
    monitor.tick(30.0)
    assert len(_messages(caplog)) == 1  # not yet: the interval has not passed
    monitor.tick(60.0)
    second = _messages(caplog, logging.INFO)[-1]
    assert "size=1/4 idle=1" in second
    assert "last 60s: acquired=3" in second
    assert "created=1" in second
    assert second.endswith("health=ok")
    monitor.tick(120.0)
    assert "acquired=0" in _messages(caplog, logging.INFO)[-1]


def test_saturation_warns_after_threshold_and_clears(caplog, make_pool: MakePool) -> None:
    pool = make_pool(name="busy", max_size=1)
    monitor = PoolMonitor(pool, interval=60.0, saturated_after=5.0)
    held = pool.acquire()
    got = threading.Event()

    def waiter() -> None:
        with pool.acquire(timeout=30.0):
            got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        wait_for(lambda: pool.stats().waiting == 1, what="a waiter")
        monitor.tick(0.0)
        monitor.tick(4.9)
        assert not _messages(caplog, logging.WARNING)
        monitor.tick(5.0)
        warnings = _messages(caplog, logging.WARNING)
        assert len(warnings) == 1
        assert warnings[0].startswith("pool 'busy' saturated: 1 waiting for 5.0 s, size=1/1")
        monitor.tick(6.0)  # still saturated: no repeat within the interval
        assert len(_messages(caplog, logging.WARNING)) == 1
    finally:
        held.release()
        assert got.wait(10)
        thread.join(10)
    monitor.tick(7.0)
    assert "pool 'busy' no longer saturated (after 7.0 s)" in _messages(caplog, logging.INFO)


def test_brief_waits_do_not_warn(caplog, make_pool: MakePool) -> None:
    pool = make_pool(name="calm", max_size=1)
    monitor = PoolMonitor(pool, saturated_after=5.0)
    held = pool.acquire()
    thread = threading.Thread(target=lambda: pool.acquire(timeout=30.0).release())
    thread.start()
    wait_for(lambda: pool.stats().waiting == 1, what="a waiter")
    monitor.tick(0.0)
    held.release()
    thread.join(10)
    monitor.tick(10.0)  # waiters were gone by then
    assert not _messages(caplog, logging.WARNING)


def test_acquire_timeouts_warn(caplog, make_pool: MakePool) -> None:
    pool = make_pool(name="small", max_size=1)
    monitor = PoolMonitor(pool, interval=60.0)
    monitor.tick(0.0)
    with pool.acquire():
        with pytest.raises(poolkit.PoolTimeout):
            pool.acquire(timeout=0.01)
    monitor.tick(1.0)
    warnings = _messages(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith("pool 'small': 1 acquire timeout(s) since the last report")
    monitor.tick(2.0)
    assert len(_messages(caplog, logging.WARNING)) == 1  # already reported


def test_creation_failing_warns_then_recovers(caplog, make_pool: MakePool) -> None:
    broken = threading.Event()
    broken.set()

    def connect() -> sqlite3.Connection:
        if broken.is_set():
            raise OSError("connection refused by 127.0.0.1:1")
        return sqlite3.connect(":memory:", check_same_thread=False)

    pool = make_pool(name="down", create=connect, max_size=2)
    monitor = PoolMonitor(pool, interval=60.0, create_failures=3)
    monitor.tick(0.0)
    for _ in range(50):
        if pool.stats().create_errors_total >= 3:
            break
        with pytest.raises(poolkit.PoolTimeout):
            pool.acquire(timeout=0.02)
    errors = pool.stats().create_errors_total
    assert errors >= 3
    monitor.tick(1.0)
    warnings = _messages(caplog, logging.WARNING)
    failing = [w for w in warnings if "creation keeps failing" in w]
    assert failing == [
        f"pool 'down': creation keeps failing ({errors} failures in a row; "
        "last: OSError: connection refused by 127.0.0.1:1)"
    ]
    assert any(w.startswith("pool 'down' health failing:") for w in warnings)
    broken.clear()
    with pool.acquire():
        pass
    monitor.tick(2.0)
    infos = _messages(caplog, logging.INFO)
    assert f"pool 'down': creating resources works again after {errors} failures" in infos
    assert "pool 'down' health ok again" in infos


def test_leaks_warn_with_the_borrow_site(caplog, make_pool: MakePool) -> None:
    clock = FakeClock()
    pool = make_pool(name="leaky", leak_timeout=10.0, clock=clock)
    monitor = PoolMonitor(pool, interval=60.0)
    monitor.tick(0.0)
    lease = pool.acquire()  # this line is the borrow site
    clock.advance(11.0)
    pool.maintain()
    monitor.tick(1.0)
    warnings = [w for w in _messages(caplog, logging.WARNING) if "leak_timeout" in w]
    assert len(warnings) == 1
    assert warnings[0].startswith("pool 'leaky': 1 lease(s) held longer than leak_timeout")
    assert "test_monitor.py" in warnings[0]
    lease.release()


def test_thread_logs_and_stops(caplog, make_pool: MakePool) -> None:
    pool = make_pool(name="bg")
    with PoolMonitor(pool, interval=0.05) as monitor:
        assert monitor.running
        wait_for(lambda: len(_messages(caplog, logging.INFO)) >= 2, what="two summaries")
    assert not monitor.running


def test_adds_pools_behind_adapters_and_refuses_others(make_pool: MakePool) -> None:
    class Wrapper:
        def __init__(self, pool: poolkit.Pool[sqlite3.Connection]) -> None:
            self.pool = pool

    monitor = PoolMonitor(Wrapper(make_pool(name="w")))
    with pytest.raises(TypeError, match="is not a pool"):
        monitor.add("not a pool")
    monitor.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, r"interval \(0\) must be > 0"),
        ({"saturated_after": -1}, r"saturated_after \(-1\) must be >= 0"),
        ({"create_failures": 0}, r"create_failures \(0\) must be >= 1"),
        ({"check_interval": 0}, r"check_interval \(0\) must be > 0"),
    ],
)
def test_bad_options_name_the_value(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoolMonitor(**kwargs)


def test_async_pool_and_closed_pools(caplog) -> None:
    import asyncio

    async def make() -> object:
        return object()

    async def main() -> None:
        apool = poolkit.AsyncPool(make, max_size=2, name="aio")
        monitor = PoolMonitor(apool, interval=10.0)
        async with apool.acquire():
            monitor.tick(0.0)
        await apool.close()
        monitor.tick(20.0)  # closed pools are skipped quietly
        monitor.close()

    asyncio.run(main())
    lines = _messages(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("pool 'aio': size=1/2 idle=0 in_use=1 waiting=0")


def test_a_pool_whose_stats_fail_does_not_silence_the_others(caplog, make_pool: MakePool):
    class BrokenStats:
        name = "broken"

        def stats(self) -> poolkit.PoolStats:
            raise RuntimeError("stats exploded")

        def on(self, kind: str, callback: Callable[[poolkit.PoolEvent], object]):
            return lambda: None

    monitor = PoolMonitor(BrokenStats(), make_pool(name="fine"), interval=10.0)
    monitor.tick(0.0)
    summaries = _messages(caplog, logging.INFO)
    assert len(summaries) == 1 and summaries[0].startswith("pool 'fine': size=0/10")
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'broken'" in errors[0].getMessage()
    assert "stats exploded" in str(errors[0].exc_info[1])
    monitor.close()


def test_restart_after_a_slow_stop_runs_exactly_one_thread() -> None:
    pool = poolkit.Pool(object, max_size=1, name="restart")
    entered = threading.Event()
    release = threading.Event()
    monitor = PoolMonitor(pool, interval=60, check_interval=0.01)
    real_tick = monitor.tick

    def slow_tick(now: float | None = None) -> None:
        entered.set()
        release.wait(10)
        real_tick(now)

    monitor.tick = slow_tick  # type: ignore[method-assign]
    monitor.start()
    assert entered.wait(10)
    monitor.stop(timeout=0.01)  # the thread is still inside its check
    monitor.start()
    release.set()
    wait_for(
        lambda: (
            sum(t.name == "poolkit-monitor" and t.is_alive() for t in threading.enumerate()) == 1
        )
    )
    assert monitor.running
    monitor.close()
    pool.close()
