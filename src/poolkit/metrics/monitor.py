"""``PoolMonitor``: a background thread that logs pool summaries and warns about trouble."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from poolkit.metrics._common import PoolLike, Subscriptions, resolve_pool

__all__ = ["PoolMonitor"]

_log = logging.getLogger("poolkit.monitor")


class _Watch(Subscriptions):
    """What the monitor remembers about one pool between ticks."""

    def __init__(self, pool: PoolLike) -> None:
        super().__init__(pool)
        self.last: Any = None  # stats at the previous tick
        self.summary_stats: Any = None  # stats at the previous summary
        self.summary_at: float | None = None
        self.waiting_since: float | None = None
        self.saturated = False
        self.fail_streak = 0
        self.failing = False
        self.reported: dict[str, int] = {}
        self.warned_at: dict[str, float] = {}
        self.health: str | None = None
        self.last_error: str | None = None
        self.last_leak_site: str | None = None
        self.unsubscribe += [
            pool.on("create_error", self._on_create_error),
            pool.on("leak", self._on_leak),
        ]

    def _on_create_error(self, event: Any) -> None:
        err = event.error
        self.last_error = f"{type(err).__name__}: {err}" if err is not None else None

    def _on_leak(self, event: Any) -> None:
        stack = event.stack
        if stack:
            lines = [ln.strip() for ln in str(stack).strip().splitlines() if ln.strip()]
            self.last_leak_site = lines[-2] if len(lines) >= 2 else lines[-1]


class PoolMonitor:
    """Logs a one-line summary of each pool every ``interval`` seconds, and warns on trouble.

    Warnings (logger ``poolkit.monitor``, level WARNING), each repeated at most once per
    ``interval`` while the condition lasts:

    * saturated: borrowers were waiting at every check for at least ``saturated_after`` s;
    * acquire timeouts happened since the last warning;
    * creation keeps failing: ``create_failures`` failed creations in a row, with the last error;
    * leaks: leases held longer than the pool's ``leak_timeout``, with the latest borrow site;
    * ``pool.health()`` left ``ok`` (and an INFO line when it comes back).

    The thread checks every ``check_interval`` seconds (default: often enough to notice
    saturation in time, at most once a second). ``tick(now)`` runs one check by hand, which is
    how the policy is tested with a fake clock.

    Example::

        from poolkit.metrics import PoolMonitor

        with PoolMonitor(db_pool, http_pool, interval=60.0, saturated_after=5.0):
            serve_forever()
    """

    def __init__(
        self,
        *pools: object,
        interval: float = 60.0,
        saturated_after: float = 5.0,
        create_failures: int = 3,
        check_interval: float | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval ({interval!r}) must be > 0")
        if not saturated_after >= 0:
            raise ValueError(f"saturated_after ({saturated_after!r}) must be >= 0")
        if create_failures < 1:
            raise ValueError(f"create_failures ({create_failures!r}) must be >= 1")
        if check_interval is None:
            check_interval = min(interval, 1.0, max(saturated_after / 2, 0.05))
        if not check_interval > 0:
            raise ValueError(f"check_interval ({check_interval!r}) must be > 0")
        self.interval = float(interval)
        self.saturated_after = float(saturated_after)
        self.create_failures = int(create_failures)
        self.check_interval = float(check_interval)
        self._log = logger or _log
        self._clock = clock
        self._watches: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for pool in pools:
            self.add(pool)

    # -- registration -------------------------------------------------------------------------

    def add(self, pool: object) -> None:
        """Watch ``pool`` (or the pool behind an adapter's ``.pool``); adding twice is a no-op."""
        target = resolve_pool(pool)
        with self._lock:
            if id(target) not in self._watches:
                self._watches[id(target)] = _Watch(target)

    def remove(self, pool: object) -> None:
        """Stop watching ``pool`` (no-op if it is not watched)."""
        target = resolve_pool(pool)
        with self._lock:
            watch = self._watches.pop(id(target), None)
        if watch is not None:
            watch.detach()

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> PoolMonitor:
        """Start the background thread (a daemon); returns ``self``. Starting twice is a no-op."""
        if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
            return self
        # each thread gets its own stop event: one still finishing a check after stop()
        # exits on its own, and never runs beside the new one
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="poolkit-monitor", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` s for it; detaches nothing (``close``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        """Stop the thread and detach the event listeners from every watched pool."""
        self.stop()
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.detach()

    @property
    def running(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> PoolMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, stop: threading.Event) -> None:
        while True:
            try:
                self.tick(self._clock())
            except Exception:  # never let the thread die
                self._log.exception("poolkit monitor: a check failed")
            if stop.wait(self.check_interval):
                return

    # -- the policy ---------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Run one check of every watched pool at time ``now`` (default: the monitor's clock)."""
        if now is None:
            now = self._clock()
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            if getattr(watch.pool, "closed", False):
                continue
            try:
                self._check(watch, now)
            except Exception:  # one broken pool must not keep the others unwatched
                self._log.exception("poolkit monitor: checking pool %r failed", watch.pool.name)

    def _warn(self, watch: _Watch, key: str, now: float, msg: str, *args: object) -> bool:
        last = watch.warned_at.get(key)
        if last is not None and now - last < self.interval:
            return False
        watch.warned_at[key] = now
        self._log.warning(msg, *args)
        return True

    def _check(self, watch: _Watch, now: float) -> None:
        pool = watch.pool
        name = pool.name
        stats = pool.stats()
        if watch.last is None:
            for field in ("timeouts_total", "leaks_total"):
                watch.reported[field] = int(getattr(stats, field, 0))
            watch.last = stats

        # Saturation: waiters seen at every check for saturated_after seconds.
        if stats.waiting > 0:
            if watch.waiting_since is None:
                watch.waiting_since = now
            waited = now - watch.waiting_since
            if waited >= self.saturated_after and self._warn(
                watch,
                "saturated",
                now,
                "pool %r saturated: %d waiting for %.1f s, size=%d/%d in_use=%d; raise "
                "max_size or shorten how long each borrower holds a resource",
                name,
                stats.waiting,
                waited,
                stats.size,
                stats.max_size,
                stats.in_use,
            ):
                watch.saturated = True
        else:
            if watch.saturated and watch.waiting_since is not None:
                self._log.info(
                    "pool %r no longer saturated (after %.1f s)", name, now - watch.waiting_since
                )
            watch.waiting_since = None
            watch.saturated = False
            watch.warned_at.pop("saturated", None)

        # Acquire timeouts since the last warning.
        timeouts = int(stats.timeouts_total) - watch.reported["timeouts_total"]
        if timeouts > 0 and self._warn(
            watch,
            "timeouts",
            now,
            "pool %r: %d acquire timeout(s) since the last report (size=%d/%d, waiting=%d); "
            "the pool is too small or resources are held too long",
            name,
            timeouts,
            stats.size,
            stats.max_size,
            stats.waiting,
        ):
            watch.reported["timeouts_total"] = int(stats.timeouts_total)

        # Creation failing again and again.
        new_errors = int(stats.create_errors_total) - int(watch.last.create_errors_total)
        new_created = int(stats.created_total) - int(watch.last.created_total)
        if new_created > 0:
            if watch.failing:
                self._log.info(
                    "pool %r: creating resources works again after %d failures",
                    name,
                    watch.fail_streak,
                )
            watch.fail_streak = 0
            watch.failing = False
            watch.warned_at.pop("create", None)
        else:
            watch.fail_streak += new_errors
        if (
            watch.fail_streak >= self.create_failures
            and new_errors > 0
            and self._warn(
                watch,
                "create",
                now,
                "pool %r: creation keeps failing (%d failures in a row; last: %s)",
                name,
                watch.fail_streak,
                watch.last_error or "unknown error",
            )
        ):
            watch.failing = True

        # Leaks since the last warning.
        leaks = int(getattr(stats, "leaks_total", 0)) - watch.reported["leaks_total"]
        if leaks > 0 and self._warn(
            watch,
            "leaks",
            now,
            "pool %r: %d lease(s) held longer than leak_timeout (never returned?); latest "
            "borrowed at: %s",
            name,
            leaks,
            watch.last_leak_site or "unknown (see the pool's 'leak' events)",
        ):
            watch.reported["leaks_total"] = int(stats.leaks_total)

        # Health transitions.
        health_fn = getattr(pool, "health", None)
        status = "ok"
        if callable(health_fn):
            health = health_fn()
            status = str(health.status)
            if status != watch.health:
                reasons = "; ".join(health.reasons) or "no reason given"
                if status != "ok":
                    self._log.warning("pool %r health %s: %s", name, status, reasons)
                elif watch.health is not None:
                    self._log.info("pool %r health ok again", name)
            watch.health = status

        # The periodic summary.
        if watch.summary_at is None or now - watch.summary_at >= self.interval:
            self._summary(watch, stats, status, now)
            watch.summary_at = now
            watch.summary_stats = stats
        watch.last = stats

    def _summary(self, watch: _Watch, stats: Any, status: str, now: float) -> None:
        prev = watch.summary_stats

        def delta(field: str) -> int:
            return int(getattr(stats, field, 0)) - int(getattr(prev, field, 0))

        waited = delta("waited_total")
        wait_s = float(getattr(stats, "wait_time_total_s", 0.0)) - float(
            getattr(prev, "wait_time_total_s", 0.0)
        )
        avg_wait = f"{wait_s / waited * 1000:.1f} ms" if waited > 0 else "-"
        self._log.info(
            "pool %r: size=%d/%d idle=%d in_use=%d waiting=%d | %s: acquired=%d "
            "waited=%d (avg %s) timeouts=%d created=%d create_errors=%d destroyed=%d "
            "leaks=%d | health=%s",
            watch.pool.name,
            stats.size,
            stats.max_size,
            stats.idle,
            stats.in_use,
            stats.waiting,
            _span(None if watch.summary_at is None else now - watch.summary_at),
            delta("acquired_total"),
            waited,
            avg_wait,
            delta("timeouts_total"),
            delta("created_total"),
            delta("create_errors_total"),
            delta("destroyed_total"),
            delta("leaks_total"),
            status,
        )


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "since start"
    if seconds < 120:
        return f"last {seconds:.0f}s"
    return f"last {seconds / 60:.0f}min"
