"""The Prometheus collector of fleet budgets, scraped from a private registry."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

from poolkit.cluster import RedisBudget
from poolkit.cluster.prometheus import BudgetCollector

from .conftest import SHARED_REDIS

pytestmark = pytest.mark.redis


def test_collector_exports_status_and_counters(budget_name, private_redis) -> None:
    registry = CollectorRegistry()
    collector = BudgetCollector(registry)
    ok = RedisBudget(SHARED_REDIS, budget_name, 7, restart_quiet=0)
    down = RedisBudget(private_redis.url, "down", 3, restart_quiet=0, socket_timeout=0.5)
    try:
        collector.register(ok)
        collector.register(down)
        ok.acquire(1.0)
        private_redis.kill()
        down.renew()
        text = generate_latest(registry).decode()
        assert f'poolkit_budget_limit{{budget="{budget_name}"}} 7.0' in text
        assert f'poolkit_budget_held{{budget="{budget_name}"}} 1.0' in text
        assert f'poolkit_budget_grants_total{{budget="{budget_name}"}} 1.0' in text
        assert f'poolkit_budget_status{{budget="{budget_name}",status="ok"}} 1.0' in text
        assert 'poolkit_budget_status{budget="down",status="unavailable"} 1.0' in text
        assert 'poolkit_budget_status{budget="down",status="ok"} 0.0' in text
        assert 'poolkit_budget_renew_failures_total{budget="down"} 1.0' in text
        collector.unregister(down)
        assert 'budget="down"' not in generate_latest(registry).decode()
        with pytest.raises(TypeError, match="no info"):
            collector.register(object())  # type: ignore[arg-type]
    finally:
        ok.close()
        down.close()
