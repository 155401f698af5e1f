"""Fleet-wide connection budget on Redis: ``RedisBudget`` (threads) and ``AsyncRedisBudget``."""

from __future__ import annotations

try:
    import redis as _redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "poolkit.cluster needs the redis package: pip install 'poolkit[redis]'"
    ) from exc

from poolkit.cluster._async import AsyncRedisBudget
from poolkit.cluster._common import (
    BudgetExhausted,
    BudgetInfo,
    BudgetToken,
    BudgetUnavailable,
)
from poolkit.cluster._sync import RedisBudget

__all__ = [
    "AsyncRedisBudget",
    "BudgetExhausted",
    "BudgetInfo",
    "BudgetToken",
    "BudgetUnavailable",
    "RedisBudget",
]
