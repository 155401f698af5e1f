"""poolkit: one fast, fault-tolerant resource pool for threads and asyncio."""

from ._types import (
    AsyncBudget,
    AsyncFactory,
    Budget,
    Factory,
    Health,
    PoolEvent,
    PoolStats,
    ResourceInfo,
)
from .errors import (
    PoolClosed,
    PoolError,
    PoolFull,
    PoolTimeout,
    ReleaseError,
    ResourceCreationError,
)
from .pool import Lease, Pool

__version__ = "0.1.0"

__all__ = [
    "AsyncBudget",
    "AsyncFactory",
    "Budget",
    "Factory",
    "Health",
    "Lease",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolEvent",
    "PoolFull",
    "PoolStats",
    "PoolTimeout",
    "ReleaseError",
    "ResourceCreationError",
    "ResourceInfo",
]
