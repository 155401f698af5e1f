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
from .async_pool import AsyncLease, AsyncPool
from .errors import (
    PoolClosed,
    PoolError,
    PoolFull,
    PoolTimeout,
    ReleaseError,
    ResourceCreationError,
)
from .null import NullAsyncPool, NullPool
from .pool import Lease, Pool

__version__ = "0.1.0"

__all__ = [
    "AsyncBudget",
    "AsyncFactory",
    "AsyncLease",
    "AsyncPool",
    "Budget",
    "Factory",
    "Health",
    "Lease",
    "NullAsyncPool",
    "NullPool",
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
