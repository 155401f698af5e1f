"""One frozen, validated object holding a pool's options."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

__all__ = ["PoolConfig"]

_names = itertools.count(1)


def _check_number(name: str, value: object, *, allow_none: bool, minimum: float = 0.0) -> None:
    if value is None:
        if not allow_none:
            raise TypeError(f"{name} must be a number, not None")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} ({value!r})")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, not NaN")
    if value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum:g}")


def _check_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 0) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Every option of a pool, validated once at construction."""

    min_size: int = 0
    max_size: int = 10
    acquire_timeout: float = 30.0
    max_waiting: int = 0
    idle_timeout: float | None = 600.0
    max_lifetime: float | None = 3600.0
    max_uses: int | None = None
    check_after_idle: float | None = 0.5
    order: str = "lifo"
    leak_timeout: float | None = None
    name: str = ""
    create_backoff: float = 0.05
    create_backoff_max: float = 10.0

    def __post_init__(self) -> None:
        _check_int("min_size", self.min_size)
        _check_int("max_size", self.max_size, minimum=1)
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        _check_number("acquire_timeout", self.acquire_timeout, allow_none=False)
        _check_int("max_waiting", self.max_waiting)
        _check_number("idle_timeout", self.idle_timeout, allow_none=True)
        _check_number("max_lifetime", self.max_lifetime, allow_none=True)
        _check_int("max_uses", self.max_uses, allow_none=True, minimum=1)
        _check_number("check_after_idle", self.check_after_idle, allow_none=True)
        if self.order not in ("lifo", "fifo"):
            raise ValueError(f"order must be 'lifo' or 'fifo', not {self.order!r}")
        _check_number("leak_timeout", self.leak_timeout, allow_none=True)
        if self.leak_timeout == 0:
            raise ValueError("leak_timeout (0) must be > 0, or None to turn leak tracking off")
        _check_number("create_backoff", self.create_backoff, allow_none=False)
        _check_number("create_backoff_max", self.create_backoff_max, allow_none=False)
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, not {type(self.name).__name__}")
        if not self.name:
            object.__setattr__(self, "name", f"pool-{next(_names)}")

    def resized(self, min_size: int | None, max_size: int | None) -> PoolConfig:
        """A copy with new sizes, validated the same way."""
        return replace(
            self,
            min_size=self.min_size if min_size is None else min_size,
            max_size=self.max_size if max_size is None else max_size,
        )

    @property
    def maintenance_interval(self) -> float:
        """How often background maintenance runs: often enough for the shortest timeout."""
        spans = [
            t
            for t in (self.idle_timeout, self.max_lifetime, self.leak_timeout)
            if t is not None and t > 0
        ]
        interval = min([1.0, *(t / 4 for t in spans)])
        return max(interval, 0.01)
