"""One background thread per process runs the maintenance of every thread-safe pool."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from ._events import logger
from .errors import PoolError

__all__ = ["Maintainable", "scheduler", "workers"]


class Maintainable(Protocol):
    """What the scheduler needs of a pool."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def maintain(self) -> None: ...


class _Scheduler:
    """A heap of (due time, pool) served by one daemon thread.

    Pools are held by weak reference, so a forgotten pool is collected and simply drops out;
    a closed pool drops out at its next turn. ``wake(pool)`` runs a pool's maintenance as soon
    as possible (used when a leaked lease must give its slot back) and never blocks, so it is
    safe from ``__del__``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, weakref.ref[Maintainable], float]] = []
        self._seq = itertools.count()
        self._urgent: list[weakref.ref[Maintainable]] = []
        self._signal = threading.Lock()
        self._signal.acquire()
        self._thread: threading.Thread | None = None

    def add(self, pool: Maintainable, interval: float) -> None:
        """Run ``pool.maintain()`` every ``interval`` seconds until the pool closes or goes."""
        ref = weakref.ref(pool)
        with self._lock:
            heapq.heappush(
                self._heap, (time.monotonic() + interval, next(self._seq), ref, interval)
            )
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="poolkit-maintenance", daemon=True
                )
                self._thread.start()
        self._poke()

    def wake(self, pool: Maintainable) -> None:
        """Maintain ``pool`` soon; never blocks (callable from ``__del__``)."""
        self._urgent.append(weakref.ref(pool))  # list.append is atomic
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # already signalled
            self._signal.release()

    def _run(self) -> None:
        while True:
            with self._lock:
                timeout = self._heap[0][0] - time.monotonic() if self._heap else 60.0
            self._signal.acquire(timeout=max(timeout, 0.0))
            urgent, self._urgent = self._urgent, []
            for ref in urgent:
                self._maintain(ref)
            now = time.monotonic()
            due = []
            with self._lock:
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for _, _, ref, interval in due:
                if self._maintain(ref):
                    with self._lock:
                        heapq.heappush(
                            self._heap,
                            (time.monotonic() + interval, next(self._seq), ref, interval),
                        )

    @staticmethod
    def _maintain(ref: weakref.ref[Maintainable]) -> bool:
        """Maintain one pool; False when it is gone or closed (it leaves the schedule)."""
        pool = ref()
        if pool is None or pool.closed:
            return False
        try:
            pool.maintain()
        except PoolError:
            pass
        except Exception:
            logger.exception("poolkit: maintenance of pool %r failed", pool.name)
        return True


scheduler = _Scheduler()


class _Workers:
    """Reusable daemon threads for blocking jobs (resource creation) of every thread pool.

    A job never waits for a busy thread: when no thread is idle a new one starts, so a
    hanging ``create`` cannot hold up another pool's. Threads idle for ``linger`` seconds exit.
    """

    def __init__(self, linger: float = 30.0) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: list[Callable[[], object]] = []
        self._idle = 0
        self._linger = linger

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job()`` on a pooled thread."""
        with self._cond:
            self._jobs.append(job)
            if self._idle >= len(self._jobs):
                self._cond.notify()
                return
        threading.Thread(target=self._run, name="poolkit-worker", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._idle += 1
                    woken = self._cond.wait(self._linger)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        return
                job = self._jobs.pop(0)
            try:
                job()
            except BaseException:
                logger.exception("poolkit: background job %r failed", job)


workers = _Workers()


def _reset_after_fork() -> None:
    """The child has none of the parent's threads: start afresh (pools re-register on use)."""
    global scheduler, workers
    scheduler = _Scheduler()
    workers = _Workers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
