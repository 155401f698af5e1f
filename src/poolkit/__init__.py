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
from .async_endpoints import AsyncEndpointLease, AsyncEndpointPool
from .async_keyed import AsyncKeyedFactory, AsyncKeyedPool
from .async_pool import AsyncLease, AsyncPool
from .buffers import BufferPool, BufferPoolStats
from .endpoints import Endpoint, EndpointLease, EndpointPool, EndpointPoolStats, EndpointStats
from .errors import (
    PoolClosed,
    PoolError,
    PoolFull,
    PoolTimeout,
    ReleaseError,
    ResourceCreationError,
)
from .keyed import KeyedFactory, KeyedPool, KeyedPoolStats
from .null import NullAsyncPool, NullPool
from .objects import ObjectPool, ObjectPoolStats
from .pool import Lease, Pool
from .workers import MapResults, WorkerPool, WorkerPoolStats, amap

__version__ = "0.1.0"

__all__ = [
    "AsyncBudget",
    "AsyncEndpointLease",
    "AsyncEndpointPool",
    "AsyncFactory",
    "AsyncKeyedFactory",
    "AsyncKeyedPool",
    "AsyncLease",
    "AsyncPool",
    "Budget",
    "BufferPool",
    "BufferPoolStats",
    "Endpoint",
    "EndpointLease",
    "EndpointPool",
    "EndpointPoolStats",
    "EndpointStats",
    "Factory",
    "Health",
    "KeyedFactory",
    "KeyedPool",
    "KeyedPoolStats",
    "Lease",
    "MapResults",
    "NullAsyncPool",
    "NullPool",
    "ObjectPool",
    "ObjectPoolStats",
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
    "WorkerPool",
    "WorkerPoolStats",
    "amap",
]
