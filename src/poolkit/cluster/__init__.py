"""Fleet-wide connection budget on Redis: ``RedisBudget`` (threads) and ``AsyncRedisBudget``."""

from __future__ import annotations

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
