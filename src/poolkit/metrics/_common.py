"""Shared helpers for the metrics exporters: what counts as a pool, and cheap histograms."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = [
    "BUDGET_STATUSES",
    "DEFAULT_BUCKETS",
    "Histogram",
    "PoolLike",
    "PoolRegistry",
    "Subscriptions",
    "destroyed_by_reason",
    "resolve_pool",
]

#: The statuses a budget reports (``Budget.status()``), as exported in state-set gauges.
BUDGET_STATUSES: tuple[str, ...] = ("ok", "degraded", "unavailable")

#: Histogram bucket bounds in seconds: from 100 microseconds (a pooled borrow) to 30 s (a
#: creation that hits its timeout).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@runtime_checkable
class PoolLike(Protocol):
    """What the exporters need from a pool: ``Pool``, ``AsyncPool`` and their relatives fit.

    Example::

        assert isinstance(poolkit.Pool(make_conn), PoolLike)
    """

    @property
    def name(self) -> str: ...

    def stats(self) -> Any: ...

    def on(self, kind: str, callback: Callable[[Any], None]) -> Callable[[], None]: ...


def resolve_pool(obj: object) -> PoolLike:
    """Return the pool behind ``obj``: the object itself, or its ``.pool`` (adapters' wrappers).

    Raises ``TypeError`` naming the object when it is neither.
    """
    if isinstance(obj, PoolLike):
        return obj
    inner = getattr(obj, "pool", None)
    if inner is not None and isinstance(inner, PoolLike):
        return inner
    raise TypeError(
        f"{obj!r} is not a pool: expected an object with .name, .stats() and .on() "
        "(poolkit.Pool, poolkit.AsyncPool) or one with such a .pool attribute"
    )


class Subscriptions:
    """A watched pool and the event listeners attached to it, detached together.

    Example::

        subs = Subscriptions(pool)
        subs.unsubscribe.append(pool.on("acquire", print))
        subs.detach()
    """

    __slots__ = ("pool", "unsubscribe")

    def __init__(self, pool: PoolLike) -> None:
        self.pool = pool
        self.unsubscribe: list[Callable[[], None]] = []

    def detach(self) -> None:
        """Remove every listener this entry attached."""
        for unsubscribe in self.unsubscribe:
            unsubscribe()
        self.unsubscribe.clear()


E = TypeVar("E", bound=Subscriptions)


class PoolRegistry(Generic[E]):
    """The exporters' bookkeeping: one entry per pool name, thread-safe.

    An entry has listeners attached exactly when timings are on; registering the same pool
    again only switches timings, a different pool under a taken name is refused.

    Example::

        registry = PoolRegistry[Subscriptions]()
        registry.register(pool, False, lambda p, timings: Subscriptions(p))
    """

    def __init__(self) -> None:
        self._entries: dict[str, E] = {}
        self._lock = threading.Lock()

    def register(self, pool: object, timings: bool, make: Callable[[PoolLike, bool], E]) -> None:
        """Add ``pool`` (or the pool behind ``.pool``) with ``make(pool, timings)``.

        Raises ``ValueError`` if a different pool with the same name is registered.
        """
        target = resolve_pool(pool)
        name = target.name
        with self._lock:
            current = self._entries.get(name)
            if current is not None:
                if current.pool is not target:
                    raise ValueError(
                        f"a different pool named {name!r} is already registered; "
                        "give each pool a unique name="
                    )
                if bool(current.unsubscribe) == timings:
                    return
                current.detach()
            self._entries[name] = make(target, timings)

    def unregister(self, pool: object) -> None:
        """Remove ``pool`` and detach its listeners (no-op if it was not registered)."""
        target = resolve_pool(pool)
        with self._lock:
            entry = self._entries.get(target.name)
            if entry is None or entry.pool is not target:
                return
            del self._entries[target.name]
        entry.detach()

    def entries(self) -> list[E]:
        """The registered entries, in registration order."""
        with self._lock:
            return list(self._entries.values())

    def names(self) -> list[str]:
        """Names of the registered pools, sorted."""
        with self._lock:
            return sorted(self._entries)


# Destroy reasons the core counts in separate stats fields: (field, reason label).
_REASON_FIELDS: tuple[tuple[str, str], ...] = (
    ("closed_idle_total", "idle"),
    ("closed_lifetime_total", "lifetime"),
    ("closed_max_uses_total", "max_uses"),
    ("closed_broken_total", "broken"),
    ("check_failed_total", "check"),
    ("closed_reset_total", "reset"),
    ("closed_leak_total", "leak"),
    ("closed_evict_total", "evict"),
    ("closed_resize_total", "resize"),
    ("closed_close_total", "close"),
)


def destroyed_by_reason(stats: Any) -> dict[str, int]:
    """Split ``stats.destroyed_total`` by reason, from the per-reason fields the stats carry.

    Whatever the named fields do not explain is reported as ``"other"``, so the values always
    add up to ``destroyed_total``.
    """
    out: dict[str, int] = {}
    for field, reason in _REASON_FIELDS:
        value = getattr(stats, field, None)
        if isinstance(value, int):
            out[reason] = value
    total = int(getattr(stats, "destroyed_total", 0))
    out["other"] = max(0, total - sum(out.values()))
    return out


class Histogram:
    """A thread-safe cumulative histogram: bucket counts, sum and count.

    Example::

        h = Histogram()
        h.observe(0.003)
        buckets, total, count = h.snapshot()
    """

    __slots__ = ("_bounds", "_count", "_counts", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        ordered = tuple(sorted(float(b) for b in bounds))
        if not ordered:
            raise ValueError("bounds () must hold at least one bucket bound")
        self._bounds = ordered
        self._counts = [0] * (len(ordered) + 1)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        """The upper bounds of the finite buckets, ascending."""
        return self._bounds

    def observe(self, value: float) -> None:
        """Record one value (seconds)."""
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """Return ``([(upper_bound, cumulative_count), ..., (inf, count)], sum, count)``."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
            count = self._count
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, c in zip((*self._bounds, float("inf")), counts, strict=True):
            running += c
            cumulative.append((bound, running))
        return cumulative, total, count
