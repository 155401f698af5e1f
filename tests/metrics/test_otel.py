"""The OpenTelemetry instruments, read with the SDK's in-memory reader."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import poolkit
from poolkit.metrics.otel import POOL_NAME, PoolInstruments

MakePool = Callable[..., poolkit.Pool[sqlite3.Connection]]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader):
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def _one(points: list[Any], **attrs: str) -> Any:
    found = [p for p in points if all(p.attributes.get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, (attrs, points)
    return found[0]


def test_semantic_convention_instruments(reader, provider, make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=3, name="orders")
    PoolInstruments(provider).register(pool, timings=True)
    held = pool.acquire()
    for _ in range(4):
        with pool.acquire() as conn:
            conn.execute("select 1")
    stats = pool.stats()
    points = _points(reader)
    name = {POOL_NAME: "orders"}
    count = points["db.client.connection.count"]
    assert _one(count, **name, **{"db.client.connection.state": "idle"}).value == stats.idle
    assert _one(count, **name, **{"db.client.connection.state": "used"}).value == stats.in_use == 1
    assert _one(points["db.client.connection.max"], **name).value == 3
    assert _one(points["db.client.connection.idle.max"], **name).value == 3
    assert _one(points["db.client.connection.idle.min"], **name).value == 1
    assert _one(points["db.client.connection.pending_requests"], **name).value == 0
    assert _one(points["db.client.connection.timeouts"], **name).value == stats.timeouts_total
    wait = _one(points["db.client.connection.wait_time"], **name)
    assert wait.count == stats.acquired_total == 5
    use = _one(points["db.client.connection.use_time"], **name)
    assert use.count == 4
    assert use.sum == pytest.approx(stats.usage_time_total_s)
    create = _one(points["db.client.connection.create_time"], **name)
    assert create.count == stats.created_total == 2
    held.release()


def test_timeouts_are_counted(reader, provider, make_pool: MakePool) -> None:
    pool = make_pool(max_size=1, name="tiny")
    PoolInstruments(provider).register(pool)
    with pool.acquire():
        for _ in range(2):
            with pytest.raises(poolkit.PoolTimeout):
                pool.acquire(timeout=0.01)
    points = _points(reader)
    assert _one(points["db.client.connection.timeouts"], **{POOL_NAME: "tiny"}).value == 2
    # No timings asked for: the histograms have no data points for this pool.
    assert not points.get("db.client.connection.wait_time")


def test_unregister_stops_reporting(reader, provider, make_pool: MakePool) -> None:
    a = make_pool(name="a")
    b = make_pool(name="b")
    instruments = PoolInstruments(provider)
    instruments.register(a)
    instruments.register(b)
    instruments.unregister(a)
    names = {p.attributes[POOL_NAME] for p in _points(reader)["db.client.connection.max"]}
    assert names == {"b"}


def test_module_register_shares_instruments_per_provider(reader, provider, make_pool):
    from poolkit.metrics import otel

    first = otel.register(make_pool(name="one"), meter_provider=provider)
    second = otel.register(make_pool(name="two"), meter_provider=provider, timings=True)
    assert first is second
    names = {p.attributes[POOL_NAME] for p in _points(reader)["db.client.connection.max"]}
    assert names == {"one", "two"}


def test_a_pool_whose_stats_fail_does_not_hide_the_others(
    reader, provider, make_pool: MakePool, caplog
) -> None:
    class BrokenStats:
        name = "broken"

        def stats(self) -> poolkit.PoolStats:
            raise RuntimeError("stats exploded")

        def on(self, kind: str, callback: Callable[[poolkit.PoolEvent], object]):
            return lambda: None

    instruments = PoolInstruments(provider)
    instruments.register(BrokenStats())
    instruments.register(make_pool(max_size=3, name="fine"))
    points = _points(reader)
    assert _one(points["db.client.connection.max"], **{POOL_NAME: "fine"}).value == 3
    assert not [
        p for p in points["db.client.connection.max"] if p.attributes[POOL_NAME] == "broken"
    ]
    assert "'broken'" in caplog.text
