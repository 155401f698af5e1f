"""The Prometheus collector, scraped over HTTP and checked against ``pool.stats()``."""

from __future__ import annotations

import sqlite3
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import poolkit
from poolkit.metrics.prometheus import PoolCollector

MakePool = Callable[..., poolkit.Pool[sqlite3.Connection]]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[Callable[[], dict[tuple[str, tuple], float]]]:
    """Serve ``registry`` on a free loopback port; scrape() returns {(sample, labels): value}."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_port

    def scrape() -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out: dict[tuple[str, tuple], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    yield scrape
    server.shutdown()
    server.server_close()
    thread.join(5)


def _val(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scrape_matches_stats(registry: CollectorRegistry, scrape, make_pool: MakePool) -> None:
    pool = make_pool(max_size=2, name="db")
    PoolCollector(registry).register(pool)
    for _ in range(5):
        with pool.acquire() as conn:
            conn.execute("select 1")
    first, second = pool.acquire(), pool.acquire()
    with pytest.raises(poolkit.PoolTimeout):
        pool.acquire(timeout=0.01)
    first.discard()  # destroyed as broken

    samples = scrape()
    stats = pool.stats()
    p = {"pool": "db"}
    assert _val(samples, "poolkit_pool_size", **p) == stats.size
    assert _val(samples, "poolkit_pool_idle", **p) == stats.idle
    assert _val(samples, "poolkit_pool_in_use", **p) == stats.in_use == 1
    assert _val(samples, "poolkit_pool_waiting", **p) == stats.waiting == 0
    assert _val(samples, "poolkit_pool_min_size", **p) == 0
    assert _val(samples, "poolkit_pool_max_size", **p) == 2
    assert _val(samples, "poolkit_pool_acquired_total", **p) == stats.acquired_total == 7
    assert _val(samples, "poolkit_pool_timeouts_total", **p) == stats.timeouts_total == 1
    assert _val(samples, "poolkit_pool_created_total", **p) == stats.created_total == 2
    assert _val(samples, "poolkit_pool_create_errors_total", **p) == 0
    assert _val(samples, "poolkit_pool_leaks_total", **p) == 0
    assert _val(samples, "poolkit_pool_destroyed_total", reason="broken", **p) == 1
    destroyed = sum(v for (n, _), v in samples.items() if n == "poolkit_pool_destroyed_total")
    assert destroyed == stats.destroyed_total == 1
    # Timings were not asked for: no histogram is exported.
    assert not any(n.startswith("poolkit_pool_acquire_wait_seconds") for n, _ in samples)
    second.release()


def test_histograms_count_every_event(registry: CollectorRegistry, scrape, make_pool: MakePool):
    pool = make_pool(max_size=2, name="timed")
    PoolCollector(registry).register(pool, timings=True)
    for _ in range(7):
        with pool.acquire() as conn:
            conn.execute("select 1")
    samples = scrape()
    stats = pool.stats()
    p = {"pool": "timed"}
    assert (
        _val(samples, "poolkit_pool_acquire_wait_seconds_count", **p) == stats.acquired_total == 7
    )
    assert _val(samples, "poolkit_pool_usage_seconds_count", **p) == 7
    assert _val(samples, "poolkit_pool_create_seconds_count", **p) == stats.created_total
    assert _val(samples, "poolkit_pool_acquire_wait_seconds_bucket", le="+Inf", **p) == 7
    usage_sum = _val(samples, "poolkit_pool_usage_seconds_sum", **p)
    assert usage_sum == pytest.approx(stats.usage_time_total_s)
    # Buckets are cumulative.
    buckets = sorted(
        (float(dict(lbl)["le"]), v)
        for (n, lbl), v in samples.items()
        if n == "poolkit_pool_usage_seconds_bucket"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)


def test_two_pools_are_labelled_apart(registry: CollectorRegistry, make_pool: MakePool) -> None:
    a = make_pool(max_size=2, name="a")
    b = make_pool(max_size=5, name="b")
    collector = PoolCollector(registry)
    collector.register(a)
    collector.register(b)
    with a.acquire():
        pass
    text = generate_latest(registry).decode()
    assert 'poolkit_pool_max_size{pool="a"} 2.0' in text
    assert 'poolkit_pool_max_size{pool="b"} 5.0' in text
    assert 'poolkit_pool_acquired_total{pool="a"} 1.0' in text
    assert 'poolkit_pool_acquired_total{pool="b"} 0.0' in text
    assert collector.pools() == ["a", "b"]


def test_unregister_detaches_listeners(registry: CollectorRegistry, make_pool: MakePool) -> None:
    pool = make_pool(name="gone")
    collector = PoolCollector(registry)
    collector.register(pool, timings=True)
    seen: list[object] = []
    pool.on("acquire", seen.append)
    collector.unregister(pool)
    with pool.acquire():
        pass
    assert len(seen) == 1
    assert "gone" not in generate_latest(registry).decode()


def test_same_name_twice_is_refused(registry: CollectorRegistry, make_pool: MakePool) -> None:
    collector = PoolCollector(registry)
    collector.register(make_pool(name="dup"))
    with pytest.raises(ValueError, match="'dup'"):
        collector.register(make_pool(name="dup"))


def test_adapter_wrapper_with_pool_attribute(
    registry: CollectorRegistry, make_pool: MakePool
) -> None:
    class Wrapper:  # what adapters such as poolkit.db.DBPool look like from outside
        def __init__(self, pool: poolkit.Pool[sqlite3.Connection]) -> None:
            self.pool = pool

    inner = make_pool(name="wrapped", max_size=4)
    PoolCollector(registry).register(Wrapper(inner))
    assert 'poolkit_pool_max_size{pool="wrapped"} 4.0' in generate_latest(registry).decode()


def test_not_a_pool_is_a_type_error(registry: CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="is not a pool"):
        PoolCollector(registry).register(object())


def test_async_pool_and_dbpool(registry: CollectorRegistry) -> None:
    import asyncio

    from poolkit.db import DBPool

    collector = PoolCollector(registry)
    with DBPool.from_url("sqlite:///:memory:", max_size=2, name="sqlite-db") as db:
        collector.register(db, timings=True)  # a DBPool wraps its Pool in .pool
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")

        async def main() -> None:
            async def make() -> int:
                return 42

            apool = poolkit.AsyncPool(make, max_size=3, name="async")
            collector.register(apool, timings=True)
            try:
                for _ in range(4):
                    async with apool.acquire():
                        pass
            finally:
                await apool.close()

        asyncio.run(main())
        text = generate_latest(registry).decode()
        assert 'poolkit_pool_acquired_total{pool="sqlite-db"} 2.0' in text
        assert 'poolkit_pool_usage_seconds_count{pool="sqlite-db"} 2.0' in text
        assert 'poolkit_pool_acquired_total{pool="async"} 4.0' in text
        assert 'poolkit_pool_acquire_wait_seconds_count{pool="async"} 4.0' in text
        assert 'poolkit_pool_max_size{pool="async"} 3.0' in text


class CountingPool:
    """A pool-like object over a real Pool that counts the listeners attached to it."""

    def __init__(self, pool: poolkit.Pool[sqlite3.Connection]) -> None:
        self.inner = pool
        self.subscribed: list[str] = []
        self.unsubscribed = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def stats(self) -> poolkit.PoolStats:
        return self.inner.stats()

    def on(self, kind: str, callback: Callable[[poolkit.PoolEvent], object]) -> Callable[[], None]:
        self.subscribed.append(kind)
        off = self.inner.on(kind, callback)

        def unsubscribe() -> None:
            self.unsubscribed += 1
            off()

        return unsubscribe


def test_timings_off_attaches_no_listener(registry: CollectorRegistry, make_pool: MakePool):
    counting = CountingPool(make_pool(name="quiet"))
    collector = PoolCollector(registry)
    collector.register(counting)
    assert counting.subscribed == []
    assert 'poolkit_pool_max_size{pool="quiet"} 10.0' in generate_latest(registry).decode()
    collector.register(counting, timings=True)  # switching on attaches the three listeners
    assert sorted(counting.subscribed) == ["acquire", "create", "release"]
    collector.register(counting, timings=False)  # and switching off detaches them
    assert counting.unsubscribed == 3


class SwitchableBudget:
    """A poolkit.Budget whose status the test sets."""

    def __init__(self) -> None:
        self.current = "ok"

    def acquire(self, timeout: float | None) -> object:
        return object()

    def release(self, token: object) -> None:
        pass

    def status(self) -> str:
        return self.current


def test_budget_status_is_a_state_set(registry: CollectorRegistry, scrape, make_pool: MakePool):
    budget = SwitchableBudget()
    with_budget = make_pool(name="budgeted", budget=budget)
    without = make_pool(name="plain")
    collector = PoolCollector(registry)
    collector.register(with_budget)
    collector.register(without)

    def statuses() -> dict[str, float]:
        samples = scrape()
        assert not any(
            n == "poolkit_pool_budget_status" and dict(lbl)["pool"] == "plain" for n, lbl in samples
        )
        return {
            dict(lbl)["status"]: v
            for (n, lbl), v in samples.items()
            if n == "poolkit_pool_budget_status" and dict(lbl)["pool"] == "budgeted"
        }

    assert with_budget.stats().budget_status == "ok"
    assert statuses() == {"ok": 1.0, "degraded": 0.0, "unavailable": 0.0}
    budget.current = "degraded"
    assert statuses() == {"ok": 0.0, "degraded": 1.0, "unavailable": 0.0}
    budget.current = "unavailable"
    assert statuses() == {"ok": 0.0, "degraded": 0.0, "unavailable": 1.0}
