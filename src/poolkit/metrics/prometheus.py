"""Prometheus exporter: a ``prometheus_client`` collector over registered pools."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from poolkit.metrics._common import (
    BUDGET_STATUSES,
    DEFAULT_BUCKETS,
    Histogram,
    PoolLike,
    PoolRegistry,
    Subscriptions,
    destroyed_by_reason,
)

__all__ = ["PoolCollector", "register", "unregister"]

_log = logging.getLogger("poolkit.metrics")

# (metric suffix, stats field, help text)
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("size", "size", "Resources that exist (idle + in use)."),
    ("idle", "idle", "Resources idle in the pool."),
    ("in_use", "in_use", "Resources lent out."),
    ("creating", "creating", "Resources being created right now."),
    ("waiting", "waiting", "Borrowers waiting for a resource."),
    ("min_size", "min_size", "Configured minimum size."),
    ("max_size", "max_size", "Configured maximum size."),
)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("acquired", "acquired_total", "Resources lent."),
    ("timeouts", "timeouts_total", "Borrowers that gave up waiting (PoolTimeout)."),
    ("created", "created_total", "Resources created."),
    ("create_errors", "create_errors_total", "Failed creation attempts."),
    ("rejected", "rejected_total", "Borrowers refused at once because max_waiting were queued."),
    ("leaks", "leaks_total", "Leases held longer than leak_timeout."),
)
# (metric suffix, event kind, help text)
_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("acquire_wait_seconds", "acquire", "Time a borrower waited for a resource."),
    ("usage_seconds", "release", "Time a resource was held by its borrower."),
    ("create_seconds", "create", "Time taken to create a resource."),
)


class _Entry(Subscriptions):
    """One registered pool and, when timings are on, its histograms and listeners."""

    __slots__ = ("histograms",)

    def __init__(self, pool: PoolLike, timings: bool, buckets: Sequence[float]) -> None:
        super().__init__(pool)
        self.histograms: dict[str, Histogram] = {}
        if timings:
            for suffix, kind, _ in _HISTOGRAMS:
                hist = Histogram(buckets)
                self.histograms[suffix] = hist
                self.unsubscribe.append(pool.on(kind, _observer(hist)))


def _observer(hist: Histogram) -> Callable[[Any], None]:
    observe = hist.observe

    def on_event(event: Any) -> None:
        duration = event.duration_s
        if duration is not None:
            observe(duration)

    return on_event


class PoolCollector(Collector):
    """Exposes every registered pool to Prometheus, labelled ``pool="<name>"``.

    Gauges ``poolkit_pool_{size,idle,in_use,creating,waiting,min_size,max_size}``; counters
    ``poolkit_pool_{acquired,timeouts,created,create_errors,rejected,leaks}_total`` and
    ``poolkit_pool_destroyed_total{reason=...}``, and for a pool with a budget
    ``poolkit_pool_budget_status{status="ok|degraded|unavailable"}`` (1 for the current one),
    all read from ``pool.stats()`` at scrape time. With ``timings=True`` also histograms
    ``poolkit_pool_acquire_wait_seconds``, ``poolkit_pool_usage_seconds`` and
    ``poolkit_pool_create_seconds``, fed by the pool's events; with timings off no listener is
    attached, so the pool pays nothing.

    Example::

        from prometheus_client import start_http_server
        from poolkit.metrics.prometheus import PoolCollector

        collector = PoolCollector()            # registers itself in the default registry
        collector.register(pool, timings=True)
        start_http_server(9100)
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        namespace: str = "poolkit",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not namespace.replace("_", "").isalnum():
            raise ValueError(f"namespace ({namespace!r}) must be letters, digits and underscores")
        self._prefix = f"{namespace}_pool_"
        self._buckets = tuple(buckets)
        Histogram(self._buckets)  # validates the bounds now rather than at the first register
        self._registry: PoolRegistry[_Entry] = PoolRegistry()
        if registry is not None:
            registry.register(self)

    def register(self, pool: object, *, timings: bool = False) -> None:
        """Start exporting ``pool`` (or the pool behind an adapter's ``.pool``).

        ``timings=True`` attaches event listeners that feed the three histograms. Raises
        ``ValueError`` if a different pool with the same name is already registered.
        """
        buckets = self._buckets
        self._registry.register(pool, timings, lambda p, t: _Entry(p, t, buckets))

    def unregister(self, pool: object) -> None:
        """Stop exporting ``pool`` and detach its listeners (no-op if it was not registered)."""
        self._registry.unregister(pool)

    def pools(self) -> list[str]:
        """Names of the registered pools."""
        return self._registry.names()

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the metric set depends on which pools are registered."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Build the metric families from the pools' current stats (called at scrape time)."""
        entries = self._registry.entries()
        p = self._prefix
        gauges = {
            suffix: GaugeMetricFamily(p + suffix, doc, labels=["pool"])
            for suffix, _, doc in _GAUGES
        }
        counters = {
            suffix: CounterMetricFamily(p + suffix, doc, labels=["pool"])
            for suffix, _, doc in _COUNTERS
        }
        destroyed = CounterMetricFamily(
            p + "destroyed", "Resources destroyed, by reason.", labels=["pool", "reason"]
        )
        budget_status = GaugeMetricFamily(
            p + "budget_status",
            "1 for the current status of the pool's budget (only pools with a budget).",
            labels=["pool", "status"],
        )
        hists = {
            suffix: HistogramMetricFamily(p + suffix, doc, labels=["pool"], unit="")
            for suffix, _, doc in _HISTOGRAMS
        }
        any_timings = False
        for entry in entries:
            name = entry.pool.name
            try:
                stats = entry.pool.stats()
            except Exception:  # one broken pool must not fail the whole scrape
                _log.exception("poolkit: reading the stats of pool %r failed", name)
                continue
            for suffix, field, _ in _GAUGES:
                gauges[suffix].add_metric([name], float(getattr(stats, field, 0)))
            for suffix, field, _ in _COUNTERS:
                counters[suffix].add_metric([name], float(getattr(stats, field, 0)))
            for reason, value in destroyed_by_reason(stats).items():
                destroyed.add_metric([name, reason], float(value))
            current = getattr(stats, "budget_status", None)
            if current is not None:
                statuses = BUDGET_STATUSES
                if current not in statuses:
                    statuses = (*statuses, current)
                for status in statuses:
                    budget_status.add_metric([name, status], float(status == current))
            for suffix, hist in entry.histograms.items():
                any_timings = True
                buckets, total, _count = hist.snapshot()
                hists[suffix].add_metric(
                    [name], [(_bound_label(b), float(c)) for b, c in buckets], total
                )
        yield from gauges.values()
        yield from counters.values()
        yield destroyed
        yield budget_status
        if any_timings:
            yield from hists.values()


def _bound_label(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


_default: PoolCollector | None = None
_default_lock = threading.Lock()


def _default_collector() -> PoolCollector:
    global _default
    with _default_lock:
        if _default is None:
            _default = PoolCollector()
        return _default


def register(pool: object, *, timings: bool = False) -> PoolCollector:
    """Export ``pool`` through the process-wide collector in the default registry.

    Returns that collector. Example: ``poolkit.metrics.prometheus.register(pool, timings=True)``.
    """
    collector = _default_collector()
    collector.register(pool, timings=timings)
    return collector


def unregister(pool: object) -> None:
    """Stop exporting ``pool`` through the process-wide collector."""
    if _default is not None:
        _default.unregister(pool)
