"""Small test helpers shared by every test folder: a fake clock and a bounded wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["FakeClock", "wait_for"]


class FakeClock:
    """A manual monotonic clock for policy tests: time moves only when the test says so.

    Call it (or ``now()``) wherever a ``clock: Callable[[], float]`` is expected.

    Example::

        clock = FakeClock()
        pool = Pool(create, idle_timeout=10, clock=clock)
        clock.advance(11)          # the idle resource is now past its idle timeout
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """The current fake time in seconds."""
        with self._lock:
            return self._now

    __call__ = now
    monotonic = now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"seconds ({seconds}) must be >= 0: a monotonic clock never goes back")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """A ``time.sleep`` stand-in that only advances the fake time."""
        self.advance(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.005, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``.

    For conditions no event signals (a server's log line, a process gone); prefer waiting
    on an Event or Condition when the code under test offers one.
    """
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(interval)
