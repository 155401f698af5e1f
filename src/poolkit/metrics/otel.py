"""OpenTelemetry exporter: the ``db.client.connection.*`` semantic-convention instruments."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from poolkit.metrics._common import DEFAULT_BUCKETS, PoolLike, PoolRegistry, Subscriptions

__all__ = ["POOL_NAME", "PoolInstruments", "register", "unregister"]

#: The attribute naming the pool on every instrument.
POOL_NAME = "db.client.connection.pool.name"
_STATE = "db.client.connection.state"

_log = logging.getLogger("poolkit.metrics")


class _Entry(Subscriptions):
    __slots__ = ("attrs",)

    def __init__(self, pool: PoolLike) -> None:
        super().__init__(pool)
        self.attrs: dict[str, str] = {POOL_NAME: pool.name}


class PoolInstruments:
    """Reports registered pools through OpenTelemetry metrics, per the semantic conventions.

    Observable instruments read ``pool.stats()`` at each collection:
    ``db.client.connection.count`` (``db.client.connection.state`` = ``idle`` | ``used``),
    ``db.client.connection.idle.max`` and ``.max`` (``max_size``), ``.idle.min``
    (``min_size``), ``.pending_requests`` (waiters) and ``.timeouts``. With ``timings=True``
    the histograms ``.create_time``, ``.wait_time`` and ``.use_time`` (seconds) are fed by the
    pool's events; with timings off no listener is attached. Every data point carries
    ``db.client.connection.pool.name``.

    Example::

        from poolkit.metrics.otel import PoolInstruments

        instruments = PoolInstruments()        # uses the global MeterProvider
        instruments.register(pool, timings=True)
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider or otel_metrics.get_meter_provider()
        meter: Meter = provider.get_meter("poolkit")
        self._registry: PoolRegistry[_Entry] = PoolRegistry()
        p = "db.client.connection."
        meter.create_observable_up_down_counter(
            p + "count",
            [self._observe_count],
            unit="{connection}",
            description="The number of connections that are currently in the state described "
            "by the state attribute.",
        )
        meter.create_observable_up_down_counter(
            p + "idle.max",
            [self._field("max_size")],
            unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            p + "idle.min",
            [self._field("min_size")],
            unit="{connection}",
            description="The minimum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            p + "max",
            [self._field("max_size")],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            p + "pending_requests",
            [self._field("waiting")],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        meter.create_observable_counter(
            p + "timeouts",
            [self._field("timeouts_total")],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain "
            "a connection from the pool.",
        )
        bounds = list(DEFAULT_BUCKETS)
        self._create_time = meter.create_histogram(
            p + "create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._wait_time = meter.create_histogram(
            p + "wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._use_time = meter.create_histogram(
            p + "use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=bounds,
        )

    def register(self, pool: object, *, timings: bool = False) -> None:
        """Start reporting ``pool`` (or the pool behind an adapter's ``.pool``).

        ``timings=True`` attaches listeners feeding ``create_time``, ``wait_time`` and
        ``use_time``. Raises ``ValueError`` if a different pool has the same name.
        """
        self._registry.register(pool, timings, self._entry)

    def _entry(self, pool: PoolLike, timings: bool) -> _Entry:
        entry = _Entry(pool)
        if timings:
            for kind, hist in (
                ("create", self._create_time),
                ("acquire", self._wait_time),
                ("release", self._use_time),
            ):
                entry.unsubscribe.append(pool.on(kind, _recorder(hist.record, entry.attrs)))
        return entry

    def unregister(self, pool: object) -> None:
        """Stop reporting ``pool`` and detach its listeners (no-op if not registered)."""
        self._registry.unregister(pool)

    def _snapshot(self) -> list[tuple[dict[str, str], Any]]:
        entries = self._registry.entries()
        out: list[tuple[dict[str, str], Any]] = []
        for entry in entries:
            try:
                out.append((entry.attrs, entry.pool.stats()))
            except Exception:  # one broken pool must not fail the callback for every pool
                _log.exception("poolkit: reading the stats of pool %r failed", entry.pool.name)
        return out

    def _observe_count(self, _options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for attrs, stats in self._snapshot():
            out.append(Observation(int(stats.idle), {**attrs, _STATE: "idle"}))
            out.append(Observation(int(stats.in_use), {**attrs, _STATE: "used"}))
        return out

    def _field(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(getattr(s, field)), attrs) for attrs, s in self._snapshot()]

        return observe


def _recorder(record: Callable[..., None], attrs: dict[str, str]) -> Callable[[Any], None]:
    def on_event(event: Any) -> None:
        duration = event.duration_s
        if duration is not None:
            record(duration, attrs)

    return on_event


_defaults: weakref.WeakKeyDictionary[MeterProvider, PoolInstruments] = weakref.WeakKeyDictionary()
_defaults_lock = threading.Lock()


def register(
    pool: object, *, timings: bool = False, meter_provider: MeterProvider | None = None
) -> PoolInstruments:
    """Report ``pool`` through one shared :class:`PoolInstruments` per meter provider.

    Example: ``poolkit.metrics.otel.register(pool, timings=True)``.
    """
    provider = meter_provider or otel_metrics.get_meter_provider()
    with _defaults_lock:
        instruments = _defaults.get(provider)
        if instruments is None:
            instruments = _defaults[provider] = PoolInstruments(provider)
    instruments.register(pool, timings=timings)
    return instruments


def unregister(pool: object, *, meter_provider: MeterProvider | None = None) -> None:
    """Stop reporting ``pool`` through the shared instruments of ``meter_provider``."""
    provider = meter_provider or otel_metrics.get_meter_provider()
    with _defaults_lock:
        instruments = _defaults.get(provider)
    if instruments is not None:
        instruments.unregister(pool)
