"""AsyncKeyedPool: the asyncio twin of KeyedPool (one AsyncPool per key under a global cap)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._permits import PermitLedger, Ticket, choose_victim
from ._types import AsyncFactory, PoolEvent, ResourceInfo, default_is_broken
from .async_pool import AsyncLease, AsyncPool
from .errors import PoolClosed, PoolTimeout
from .keyed import (
    _CLOSED_RETRIES,
    _EVICT_POLL_S,
    _RESCAN_S,
    KeyedPoolStats,
    _bind,
    _budget_timeout,
    _cap_was_the_reason,
    _check_limits,
    _fair_is_broken,
    _key_label,
    _split_factory,
    _sum_stats,
)

__all__ = ["AsyncKeyedFactory", "AsyncKeyedPool"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class AsyncKeyedFactory(Generic[K, R]):
    """Base class of factories for :class:`AsyncKeyedPool`: ``async create(key)`` plus hooks.

    Example::

        class Shards(AsyncKeyedFactory[int, asyncpg.Connection]):
            async def create(self, shard: int) -> asyncpg.Connection:
                return await asyncpg.connect(SHARD_DSNS[shard])

            async def destroy(self, conn: asyncpg.Connection) -> None:
                await conn.close()

        pool = AsyncKeyedPool(Shards(), max_per_key=4, max_total=16)
    """

    __module__ = "poolkit"

    async def create(self, key: K) -> R:
        """Create a new resource for ``key``."""
        raise NotImplementedError(f"{type(self).__name__} must implement create(key)")

    async def destroy(self, resource: R) -> None:
        """Release what ``resource`` holds."""

    async def check(self, resource: R, info: ResourceInfo) -> bool:
        """Say whether an idle resource is still usable."""
        return True

    async def reset(self, resource: R) -> None:
        """Bring a returned resource back to a clean state; raising destroys it."""

    def is_broken(self, resource: R, exc: BaseException | None) -> bool:
        """Say, without I/O, whether the resource must be destroyed after use."""
        return default_is_broken(resource, exc)

    def for_key(self, key: K) -> AsyncFactory[R] | Callable[[], Awaitable[R]]:
        """The factory of the sub-pool for ``key`` (default: this factory bound to ``key``)."""
        bound: AsyncFactory[R] | Callable[[], Awaitable[R]] = _bind(self, AsyncKeyedFactory, key)
        return bound


async def _never_acreate() -> Any:
    raise RuntimeError("validation pool never creates")


# -- asyncio shell --------------------------------------------------------------------------------


class _AsyncSharedBudget:
    """The global cap of an :class:`AsyncKeyedPool` (one event loop, no lock needed)."""

    def __init__(self, owner: AsyncKeyedPool[Any, Any], max_total: int) -> None:
        self._owner = owner
        self.ledger = PermitLedger(max_total)
        self.closed = False
        #: bumped whenever a resource may have gone idle (a return or a creation anywhere)
        self.idle_epoch = 0

    async def acquire(
        self, key: Hashable, timeout: float | None, pool: AsyncPool[Any] | None
    ) -> Ticket:
        ledger = self.ledger
        if self.closed:
            raise PoolClosed(f"keyed pool {self._owner.name!r} is closed")
        ticket = ledger.request(key)
        if ticket.granted:
            return ticket
        ticket.waker = waker = asyncio.Event()
        if not self._owner._listening:
            self._owner._listen_for_releases()
        loop = asyncio.get_running_loop()
        start = loop.time()
        now = loop.time
        scanned_epoch, scanned_at = -1, start
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                if self.idle_epoch != scanned_epoch or now() - scanned_at >= _RESCAN_S:
                    scanned_epoch, scanned_at = self.idle_epoch, now()
                    await self._evict_for(key)
                waker.clear()
                if ticket.granted:
                    return ticket
                if self.closed:
                    raise PoolClosed(f"keyed pool {self._owner.name!r} is closed")
                if pool is not None and pool.stats().waiting == 0:
                    # the borrower left (timed out): do not hold a place in the queue
                    raise _budget_timeout(self._owner.name, ledger, key, loop.time() - start)
                wait = _EVICT_POLL_S
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise _budget_timeout(self._owner.name, ledger, key, loop.time() - start)
                    wait = min(wait, remaining)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waker.wait(), wait)
                if ticket.granted:
                    return ticket
        except BaseException:
            passed = ledger.cancel(ticket)
            if passed is not None and passed.waker is not None:
                passed.waker.set()
            raise

    async def _evict_for(self, key: Hashable) -> None:
        if not self.ledger.begin_eviction():
            return
        closed = 0
        try:
            candidates = {k: p for k, p in self._owner._pools.items() if k != key}
            while candidates and not closed:
                victim = choose_victim((k, p.oldest_idle_at()) for k, p in candidates.items())
                if victim is None:
                    break
                closed = await candidates.pop(victim).close_idle(1)
        finally:
            self.ledger.end_eviction(closed)

    async def release(self, ticket: object) -> None:
        if isinstance(ticket, Ticket):
            nxt = self.ledger.release(ticket)
            if nxt is not None:
                nxt.waker.set()

    def nudge(self, _event: PoolEvent | None = None) -> None:
        self.idle_epoch += 1
        head = self.ledger.head()
        if head is not None and head.waker is not None:
            head.waker.set()

    def close(self) -> None:
        self.closed = True
        for t in self.ledger.drain():
            t.waker.set()


class _AsyncKeyBudget:
    """The :class:`poolkit.AsyncBudget` an async sub-pool sees."""

    __slots__ = ("_key", "_shared", "pool")

    def __init__(self, shared: _AsyncSharedBudget, key: Hashable) -> None:
        self._shared = shared
        self._key = key
        self.pool: AsyncPool[Any] | None = None

    async def acquire(self, timeout: float | None) -> object:
        return await self._shared.acquire(self._key, timeout, self.pool)

    async def release(self, token: object) -> None:
        await self._shared.release(token)

    def status(self) -> str:
        return "ok"


class _AsyncAcquire(Generic[R]):
    """``async with pool.acquire(key) as r:`` for an async keyed pool."""

    __slots__ = ("_args", "_lease", "_pool")

    def __init__(self, pool: AsyncKeyedPool[Any, R], args: tuple[Any, float | None, int]) -> None:
        self._pool = pool
        self._args = args
        self._lease: AsyncLease[R] | None = None

    async def __aenter__(self) -> R:
        self._lease = await self._pool.get(*self._args)
        return self._lease.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        if lease is not None:
            self._lease = None
            await lease.__aexit__(exc_type, exc, tb)


class AsyncKeyedPool(Generic[K, R]):
    """The asyncio twin of :class:`KeyedPool`: one :class:`poolkit.AsyncPool` per key.

    Example::

        pool = AsyncKeyedPool(lambda shard: asyncpg.connect(DSNS[shard]),
                              destroy=lambda c: c.close(), max_per_key=4, max_total=16)
        async with pool.acquire(3) as conn:
            await conn.fetchval("SELECT 1")
        await pool.close()
    """

    __module__ = "poolkit"

    def __init__(
        self,
        create: Callable[[K], Awaitable[R]] | AsyncKeyedFactory[K, R],
        *,
        max_per_key: int = 10,
        max_total: int | None = None,
        idle_timeout: float | None = 600.0,
        destroy: Callable[[R], Any] | None = None,
        check: Callable[[R, ResourceInfo], Any] | None = None,
        reset: Callable[[R], Any] | None = None,
        is_broken: Callable[[R, BaseException | None], bool] | None = None,
        name: str | None = None,
        **pool_options: Any,
    ) -> None:
        _check_limits(max_per_key, max_total, idle_timeout)
        for bad in ("max_size", "min_size", "budget", "create"):
            if bad in pool_options:
                raise TypeError(
                    f"AsyncKeyedPool does not take {bad}= (use max_per_key / max_total instead)"
                )
        if not (isinstance(create, AsyncKeyedFactory) or callable(create)):
            raise TypeError(
                "create must be a callable create(key) or an AsyncKeyedFactory, "
                f"not {type(create).__name__}"
            )
        self._create = create
        self._hooks = {"destroy": destroy, "check": check, "reset": reset, "is_broken": is_broken}
        self._options = pool_options
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self.name = name or f"keyed-{id(self):x}"
        self._pools: dict[K, AsyncPool[R]] = {}
        self._closed = False
        self._budget = _AsyncSharedBudget(self, max_total) if max_total is not None else None
        self._empty_since: dict[K, float] = {}
        self._sweep_every = (
            float("inf") if idle_timeout is None else max(0.05, min(idle_timeout / 2, 30.0))
        )
        self._next_sweep = time.monotonic() + self._sweep_every
        self._subpools_closed = 0
        self._listening = False
        # validate sub-pool options now (constructing an AsyncPool needs no loop, does no I/O)
        AsyncPool(_never_acreate, max_size=max_per_key, idle_timeout=idle_timeout, **pool_options)

    def pool_for(self, key: K) -> AsyncPool[R]:
        """The sub-pool of ``key``, created (empty) if needed."""
        pool = self._pools.get(key)
        if pool is None:
            if self._closed:
                raise PoolClosed(f"keyed pool {self.name!r} is closed")
            factory, hooks = _split_factory(self._create, AsyncKeyedFactory, key, self._hooks)
            budget = _AsyncKeyBudget(self._budget, key) if self._budget is not None else None
            if self._budget is not None:
                fair = _fair_is_broken(factory, hooks, self._budget.ledger, key)
                hooks = {**hooks, "is_broken": fair}
            pool = AsyncPool(
                factory,
                max_size=self.max_per_key,
                idle_timeout=self.idle_timeout,
                name=f"{self.name}[{_key_label(key)}]",
                budget=budget,
                **hooks,
                **self._options,
            )
            if budget is not None and self._budget is not None:
                budget.pool = pool
                if self._listening:
                    pool.on("release", self._budget.nudge)
                    pool.on("create", self._budget.nudge)
            self._pools[key] = pool
        return pool

    def _listen_for_releases(self) -> None:
        """The cap was reached once: from now on a resource going idle wakes a budget waiter."""
        if self._listening or self._budget is None:
            return
        self._listening = True
        for pool in self._pools.values():
            pool.on("release", self._budget.nudge)
            pool.on("create", self._budget.nudge)

    def keys(self) -> list[K]:
        """The keys that have a sub-pool right now."""
        return list(self._pools)

    def detach(self, key: K) -> AsyncPool[R] | None:
        """Remove ``key``'s sub-pool without closing it; returns it (or None)."""
        self._empty_since.pop(key, None)
        return self._pools.pop(key, None)

    async def discard(self, key: K, timeout: float = 5.0) -> bool:
        """Close ``key``'s sub-pool (see :meth:`KeyedPool.discard`)."""
        pool = self.detach(key)
        if pool is None:
            return False
        self._subpools_closed += 1
        await pool.close(timeout)
        return True

    async def close_idle(self, key: K | None = None, count: int | None = None) -> int:
        """Close up to ``count`` idle resources of ``key`` (of every key when None)."""
        if key is not None:
            pool = self._pools.get(key)
            return await pool.close_idle(count) if pool is not None else 0
        total = 0
        for pool in list(self._pools.values()):
            total += await pool.close_idle(count)
        return total

    async def resize(self, max_per_key: int | None = None, max_total: int | None = None) -> None:
        """Change the limits at run time (see :meth:`KeyedPool.resize`)."""
        new_per_key = self.max_per_key if max_per_key is None else max_per_key
        new_total = self.max_total if max_total is None else max_total
        _check_limits(new_per_key, new_total, self.idle_timeout)
        if max_total is not None and self._budget is None:
            raise ValueError(
                f"max_total ({max_total}) cannot be set on keyed pool {self.name!r}, "
                "built without one; pass max_total= to the constructor"
            )
        self.max_per_key = new_per_key
        for pool in list(self._pools.values()):
            await pool.resize(max_size=new_per_key)
        budget = self._budget
        if budget is None or new_total is None:
            return
        self.max_total = new_total
        for ticket in budget.ledger.resize(new_total):
            ticket.waker.set()
        for _ in range(max(0, budget.ledger.in_use - new_total)):
            pools: dict[Hashable, AsyncPool[R]] = dict(self._pools.items())
            victim = choose_victim((k, p.oldest_idle_at()) for k, p in pools.items())
            if victim is None or not await pools[victim].close_idle(1):
                break

    async def sweep(self, now: float | None = None) -> int:
        """Close the sub-pools that held nothing for ``idle_timeout``; returns how many."""
        if self.idle_timeout is None:
            return 0
        now = time.monotonic() if now is None else now
        self._next_sweep = now + self._sweep_every
        doomed: list[AsyncPool[R]] = []
        for key, pool in list(self._pools.items()):
            s = pool.stats()
            if s.size or s.creating or s.waiting:
                self._empty_since.pop(key, None)
                continue
            since = self._empty_since.setdefault(key, now)
            if now - since >= self.idle_timeout:
                del self._pools[key]
                del self._empty_since[key]
                doomed.append(pool)
        self._subpools_closed += len(doomed)
        for pool in doomed:
            await pool.close()
        return len(doomed)

    async def get(self, key: K, timeout: float | None = None, priority: int = 0) -> AsyncLease[R]:
        """Borrow a resource for ``key``: a lease to ``await lease.release()``."""
        if time.monotonic() >= self._next_sweep:
            await self.sweep()
        for _ in range(_CLOSED_RETRIES):
            pool = self.pool_for(key)
            try:
                return await pool.get(timeout=timeout, priority=priority)
            except PoolTimeout as exc:
                budget = self._budget
                if budget is not None and _cap_was_the_reason(budget.ledger, pool.stats()):
                    raise _budget_timeout(self.name, budget.ledger, key, exc.waited_s) from exc
                raise
            except PoolClosed:
                if self._closed:
                    raise
                if self._pools.get(key) is pool:
                    del self._pools[key]
        raise PoolClosed(f"keyed pool {self.name!r}: sub-pool for {_key_label(key)} kept closing")

    def acquire(self, key: K, timeout: float | None = None, priority: int = 0) -> _AsyncAcquire[R]:
        """``async with pool.acquire(key) as r:`` borrow for the block."""
        return _AsyncAcquire(self, (key, timeout, priority))

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closed

    def stats(self) -> KeyedPoolStats[K]:
        """Totals over every key and each key's :class:`PoolStats`."""
        per_key = {k: p.stats() for k, p in list(self._pools.items())}
        return _sum_stats(
            self.name,
            per_key=per_key,
            max_per_key=self.max_per_key,
            max_total=self.max_total,
            ledger=self._budget.ledger if self._budget else None,
            subpools_closed=self._subpools_closed,
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Close every sub-pool: waiters get ``PoolClosed``; all wait together up to
        ``timeout`` s for borrowed resources. A second close is a no-op."""
        if self._closed:
            return
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        if self._budget is not None:
            self._budget.close()
        if pools:
            await asyncio.gather(*(pool.close(timeout) for pool in pools))

    async def __aenter__(self) -> AsyncKeyedPool[K, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        cap = "" if self.max_total is None else f" max_total={self.max_total}"
        return (
            f"<AsyncKeyedPool {self.name!r}{state} keys={len(self._pools)} "
            f"max_per_key={self.max_per_key}{cap}>"
        )
