"""Prometheus collector for fleet budgets: limit, held leases, status and failure counters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from poolkit.cluster._common import BudgetInfo
from poolkit.metrics._common import BUDGET_STATUSES

__all__ = ["BudgetCollector"]

_log = logging.getLogger("poolkit.cluster")

# (metric suffix, BudgetInfo field, help)
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("limit", "limit", "The fleet-wide number of leases the budget allows."),
    ("held", "held", "Leases this process holds."),
    ("local_held", "local_held", "Leases granted locally while Redis was unreachable."),
    ("server_count", "server_count", "Leases held fleet-wide at the last Redis reply."),
)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("grants", "grants_total", "Leases granted by Redis to this process."),
    ("local_grants", "local_grants_total", "Leases granted locally (mode='degraded')."),
    ("refusals", "refusals_total", "Acquires refused (budget full or Redis unavailable)."),
    ("renewals", "renewals_total", "Successful batched renewals."),
    ("renew_failures", "renew_failures_total", "Failed renewals (Redis unreachable)."),
    ("readded", "readded_total", "Leases re-registered because Redis had lost them."),
    ("restarts", "restarts_detected", "Times Redis was found to have lost the budget's data."),
)


class _HasInfo(Protocol):
    def info(self) -> BudgetInfo: ...


class BudgetCollector(Collector):
    """Exposes registered ``RedisBudget``/``AsyncRedisBudget`` objects, labelled
    ``budget="<name>"``: gauges ``poolkit_budget_{limit,held,local_held,server_count}``,
    ``poolkit_budget_status{status="ok|degraded|unavailable"}`` (1 for the current one) and
    counters ``poolkit_budget_{grants,local_grants,refusals,renewals,renew_failures,readded,
    restarts}_total``, read from ``budget.info()`` at scrape time (no Redis call).

    Example::

        from poolkit.cluster.prometheus import BudgetCollector

        collector = BudgetCollector()       # registers itself in the default registry
        collector.register(budget)
    """

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "poolkit"
    ) -> None:
        if not namespace.replace("_", "").isalnum():
            raise ValueError(f"namespace ({namespace!r}) must be letters, digits and underscores")
        self._prefix = f"{namespace}_budget_"
        self._budgets: dict[int, _HasInfo] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def register(self, budget: _HasInfo) -> None:
        """Export ``budget`` (anything with ``info() -> BudgetInfo``)."""
        if not callable(getattr(budget, "info", None)):
            raise TypeError(f"{type(budget).__name__} has no info(): not a poolkit budget")
        with self._lock:
            self._budgets[id(budget)] = budget

    def unregister(self, budget: _HasInfo) -> None:
        """Stop exporting ``budget`` (no error when it was not registered)."""
        with self._lock:
            self._budgets.pop(id(budget), None)

    def collect(self) -> Iterable[Metric]:
        p = self._prefix
        gauges = {s: GaugeMetricFamily(p + s, doc, labels=["budget"]) for s, _, doc in _GAUGES}
        counters = {
            s: CounterMetricFamily(p + s, doc, labels=["budget"]) for s, _, doc in _COUNTERS
        }
        status = GaugeMetricFamily(
            p + "status", "1 for the budget's current status.", labels=["budget", "status"]
        )
        with self._lock:
            budgets = list(self._budgets.values())
        for budget in budgets:
            try:
                info = budget.info()
            except Exception:  # one broken budget must not fail the whole scrape
                _log.exception("poolkit: reading a budget's info failed")
                continue
            for suffix, field, _ in _GAUGES:
                value = getattr(info, field)
                if value is not None:
                    gauges[suffix].add_metric([info.name], float(value))
            for suffix, field, _ in _COUNTERS:
                counters[suffix].add_metric([info.name], float(getattr(info, field)))
            for s in BUDGET_STATUSES:
                status.add_metric([info.name, s], 1.0 if info.status == s else 0.0)
        yield from gauges.values()
        yield status
        yield from counters.values()

    def describe(self) -> Iterable[Metric]:
        return []
