"""AsyncEndpointPool: the asyncio twin of EndpointPool (balancing and ejection over replicas)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._endpoint_policy import EndpointPolicy
from ._events import logger
from ._types import ResourceInfo
from .async_keyed import AsyncKeyedFactory, AsyncKeyedPool
from .async_pool import AsyncLease, AsyncPool
from .endpoints import (
    Endpoint,
    EndpointPoolStats,
    _all_down,
    _as_endpoint,
    _describe,
    _endpoint_stats,
    _user_hooks,
)
from .errors import PoolClosed, PoolTimeout, ResourceCreationError
from .keyed import _Bound

__all__ = ["AsyncEndpointLease", "AsyncEndpointPool"]

T = TypeVar("T")
R = TypeVar("R")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncEndpointLease(Generic[R]):
    """A resource borrowed from an :class:`AsyncEndpointPool`; ``.endpoint`` says where.

    Example::

        lease = await pool.get()
        try:
            await lease.resource.fetchval("SELECT 1")
        finally:
            await lease.release()
    """

    __module__ = "poolkit"
    __slots__ = ("_counted", "_ep", "_lease", "_owner", "endpoint", "resource")

    def __init__(
        self,
        owner: AsyncEndpointPool[Any, R],
        ep: int,
        endpoint: Endpoint[Any],
        lease: AsyncLease[R],
    ) -> None:
        self._owner = owner
        self._ep = ep
        self._lease = lease
        self._counted = True  # the endpoint counts this lease in use until _end()
        self.endpoint = endpoint
        self.resource = lease.resource

    @property
    def released(self) -> bool:
        """True once released or discarded."""
        return self._lease.released

    def _end(self) -> None:
        # once only: a second release raises ReleaseError but must not count the end again
        if self._counted:
            self._counted = False
            self._owner._policy.end(self._ep)

    async def release(self) -> None:
        """Give the resource back to its endpoint's pool."""
        try:
            await self._lease.release()
        finally:
            self._end()

    async def discard(self) -> None:
        """Destroy the resource instead of returning it."""
        try:
            await self._lease.discard()
        finally:
            self._end()

    async def __aenter__(self) -> R:
        return self.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._lease.__aexit__(exc_type, exc, tb)
        finally:
            self._end()

    def __repr__(self) -> str:
        return f"<poolkit.AsyncEndpointLease {self.endpoint.name!r}>"


class _AsyncAcquire(Generic[R]):
    __slots__ = ("_args", "_lease", "_pool")

    def __init__(self, pool: AsyncEndpointPool[Any, R], args: tuple[float | None, int]) -> None:
        self._pool = pool
        self._args = args
        self._lease: AsyncEndpointLease[R] | None = None

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


class _AsyncFactory(AsyncKeyedFactory[int, Any]):
    def __init__(self, owner: AsyncEndpointPool[Any, Any]) -> None:
        self._owner = owner

    async def create(self, key: int) -> Any:  # pragma: no cover - for_key is used instead
        raise NotImplementedError

    def for_key(self, key: int) -> Any:
        owner = self._owner
        create, hooks = owner._hooks_for(key)
        hooks["create"] = functools.partial(owner._guarded_create, key, create)
        check = hooks.get("check")
        if check is not None:
            hooks["check"] = functools.partial(owner._guarded_check, key, check)
        return _Bound(key, hooks)


class AsyncEndpointPool(Generic[T, R]):
    """The asyncio twin of :class:`poolkit.EndpointPool` (same strategies, ejection, stats).

    Hooks may be sync or async. Probes and drains run as tasks of the pool's event loop.

    Example::

        pool = AsyncEndpointPool(asyncpg.connect, [DSN_1, DSN_2], destroy=lambda c: c.close(),
                                 strategy="random_two_choices", max_per_endpoint=8)
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        await pool.close()
    """

    __module__ = "poolkit"

    def __init__(
        self,
        create: Callable[[T], Awaitable[R] | R] | AsyncKeyedFactory[T, R],
        endpoints: Iterable[T | Endpoint[T]] = (),
        *,
        strategy: str = "round_robin",
        max_per_endpoint: int = 10,
        max_total: int | None = None,
        failure_threshold: int = 3,
        base_backoff: float = 1.0,
        max_backoff: float = 30.0,
        drain_timeout: float = 30.0,
        acquire_timeout: float = 30.0,
        destroy: Callable[[R], Any] | None = None,
        check: Callable[[R, ResourceInfo], Any] | None = None,
        reset: Callable[[R], Any] | None = None,
        is_broken: Callable[[R, BaseException | None], bool] | None = None,
        name: str | None = None,
        clock: Callable[[], float] | None = None,
        rng: Any = None,
        **pool_options: Any,
    ) -> None:
        if not (isinstance(create, AsyncKeyedFactory) or callable(create)):
            raise TypeError(
                "create must be a callable create(target) or an AsyncKeyedFactory, "
                f"not {type(create).__name__}"
            )
        self.name = name or f"endpoints-{id(self):x}"
        self._policy = EndpointPolicy(
            strategy,
            failure_threshold=failure_threshold,
            base_backoff=base_backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._create = create
        self._keyword_hooks = {
            "destroy": destroy,
            "check": check,
            "reset": reset,
            "is_broken": is_broken,
        }
        self._clock = clock or time.monotonic
        self._endpoints: dict[int, Endpoint[T]] = {}
        self._closed = False
        self._acquire_timeout = acquire_timeout
        self._drain_timeout = drain_timeout
        self._failovers = 0
        self._acquired = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keyed: AsyncKeyedPool[int, R] = AsyncKeyedPool(
            _AsyncFactory(self),
            max_per_key=max_per_endpoint,
            max_total=max_total,
            acquire_timeout=acquire_timeout,
            name=self.name,
            **pool_options,
        )
        for item in endpoints:
            self.add_endpoint(item)

    # -- membership ---------------------------------------------------------------------------

    def add_endpoint(self, endpoint: T | Endpoint[T]) -> Endpoint[T]:
        """Add an endpoint at run time (healthy at once); returns its :class:`Endpoint`."""
        ep = _as_endpoint(endpoint)
        if self._closed:
            raise PoolClosed(f"endpoint pool {self.name!r} is closed")
        if any(self._endpoints[i].name == ep.name for i in self._policy.ids()):
            raise ValueError(f"endpoint {ep.name} is already in pool {self.name!r}")
        self._endpoints[self._policy.add(ep.name, ep.weight)] = ep
        return ep

    async def remove_endpoint(self, endpoint: Endpoint[T] | str, *, wait: bool = False) -> None:
        """Stop traffic to an endpoint and drain it (see :meth:`EndpointPool.remove_endpoint`)."""
        wanted = endpoint.name if isinstance(endpoint, Endpoint) else endpoint
        found = [i for i in self._policy.ids() if self._endpoints[i].name == wanted]
        if not found:
            raise KeyError(f"no endpoint {wanted} in pool {self.name!r}")
        self._policy.remove(found[0])
        sub = self._keyed.detach(found[0])
        if sub is not None:
            if wait:
                await sub.close(self._drain_timeout)
            else:
                self._spawn(sub.close(self._drain_timeout))

    def endpoints(self) -> list[Endpoint[T]]:
        """The endpoints in rotation (whatever their state), in priority order."""
        return [self._endpoints[i] for i in self._policy.ids()]

    def _hooks_for(self, ep_id: int) -> tuple[Callable[[], Any], dict[str, Any]]:
        target = self._endpoints[ep_id].target
        return _user_hooks(self._create, AsyncKeyedFactory, target, self._keyword_hooks)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- health ---------------------------------------------------------------------------------

    async def _guarded_create(self, ep_id: int, create: Callable[[], Any]) -> R:
        policy = self._policy
        if ep_id not in policy or policy.state(ep_id) == "ejected":
            raise ResourceCreationError(
                f"endpoint {self._endpoints[ep_id].name} is ejected; not connecting"
            )
        try:
            resource: R = await _call(create)
        except Exception as exc:
            self._failed(ep_id, exc, "create")
            raise
        self._succeeded(ep_id, "create")
        return resource

    async def _guarded_check(
        self, ep_id: int, check: Callable[..., Any], resource: R, info: ResourceInfo
    ) -> bool:
        try:
            ok = bool(await _call(check, resource, info))
        except Exception as exc:
            self._failed(ep_id, exc, "check")
            raise
        if ok:
            self._succeeded(ep_id, "check")
        else:
            self._failed(ep_id, None, "check")
        return ok

    def _succeeded(self, ep_id: int, kind: str) -> None:
        if self._policy.on_success(ep_id, self._clock(), kind):
            logger.info(
                "poolkit: endpoint pool %r: %s is back", self.name, self._endpoints[ep_id].name
            )

    def _failed(self, ep_id: int, exc: BaseException | None, kind: str) -> None:
        error = "check failed" if exc is None else _describe(exc)
        now = self._clock()
        if not self._policy.on_failure(ep_id, now, error, kind):
            return
        snap = self._policy.snapshot(ep_id, now)
        logger.warning(
            "poolkit: endpoint pool %r: %s ejected for %.1fs after %d failure(s): %s",
            self.name,
            snap.name,
            snap.ejected_for_s or 0.0,
            snap.consecutive_failures,
            error,
        )
        sub = self._keyed.detach(ep_id)
        if sub is not None:
            self._spawn(sub.close(self._drain_timeout))

    def _start_probes(self, now: float) -> list[int]:
        policy = self._policy
        return [i for i in policy.due_probes(now) if policy.start_probe(i)]

    async def _probe(self, ep_id: int) -> None:
        """Half-open: one trial resource, checked and destroyed; success lets traffic back."""
        create, hooks = self._hooks_for(ep_id)
        error: BaseException | None = None
        ok = False
        try:
            resource = await _call(create)
        except Exception as exc:
            error = exc
        else:
            try:
                check = hooks.get("check")
                info = ResourceInfo(0, 0.0, 0.0, 0)
                ok = bool(await _call(check, resource, info)) if check else True
            except Exception as exc:
                error = exc
            finally:
                destroy = hooks.get("destroy")
                if destroy is not None:
                    try:
                        await _call(destroy, resource)
                    except Exception as exc:
                        logger.debug("poolkit: probe resource destroy failed: %r", exc)
        if ok:
            self._succeeded(ep_id, "probe")
        else:
            self._failed(ep_id, error, "probe")

    async def probe(self) -> list[Endpoint[T]]:
        """Probe now every ejected endpoint whose backoff has run out; returns those back."""
        probed = self._start_probes(self._clock())
        await asyncio.gather(*(self._probe(i) for i in probed))
        return [
            self._endpoints[i]
            for i in probed
            if i in self._policy and self._policy.state(i) == "healthy"
        ]

    # -- borrowing ------------------------------------------------------------------------------

    async def _borrow(
        self, sub: AsyncPool[R], ep_id: int, timeout: float, priority: int
    ) -> AsyncLease[R]:
        try:
            return await sub.get(timeout=timeout, priority=priority)
        except BaseException:
            self._policy.end(ep_id)
            raise

    async def get(self, timeout: float | None = None, priority: int = 0) -> AsyncEndpointLease[R]:
        """Borrow from the endpoint the strategy picks; fails over while endpoints drop out."""
        clock = self._clock
        now = clock()
        deadline = now + (self._acquire_timeout if timeout is None else timeout)
        policy = self._policy
        for attempt in range(len(self._endpoints) + 3):
            if now >= policy.next_probe_at():
                for ep_id in self._start_probes(now):
                    self._spawn(self._probe(ep_id))
            if self._closed:
                raise PoolClosed(f"endpoint pool {self.name!r} is closed")
            ep_id_or_none = policy.pick(now)
            if ep_id_or_none is None:
                raise _all_down(self.name, policy, now)
            ep_id = ep_id_or_none
            sub: AsyncPool[R] = self._keyed.pool_for(ep_id)
            policy.begin(ep_id)  # borrowers on their way to an endpoint spread the load too
            if attempt:
                self._failovers += 1
            try:
                lease = await self._borrow(sub, ep_id, max(0.0, deadline - now), priority)
            except PoolClosed:
                if self._closed:
                    raise
                now = clock()
                continue
            except PoolTimeout as exc:
                now = clock()
                healthy = ep_id in policy and policy.state(ep_id) == "healthy"
                if not healthy and now < deadline:
                    continue
                raise PoolTimeout(
                    f"endpoint pool {self.name!r}: {exc}",
                    pool=self.name,
                    phase=exc.phase,
                    waited_s=exc.waited_s,
                ) from exc
            self._acquired += 1
            return AsyncEndpointLease(self, ep_id, self._endpoints[ep_id], lease)
        raise _all_down(self.name, policy, clock())

    def acquire(self, timeout: float | None = None, priority: int = 0) -> _AsyncAcquire[R]:
        """``async with pool.acquire() as r:`` borrow for the block (see :meth:`get`)."""
        return _AsyncAcquire(self, (timeout, priority))

    # -- lifecycle and inspection ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closed

    def stats(self) -> EndpointPoolStats:
        """Per-endpoint state and counters, plus totals."""
        per_key = self._keyed.stats().per_key
        snaps = self._policy.snapshots(self._clock())
        eps = tuple(_endpoint_stats(s, per_key.get(s.id)) for s in snaps)
        return EndpointPoolStats(
            name=self.name,
            strategy=self._policy.strategy,
            healthy=sum(1 for e in eps if e.state == "healthy"),
            size=sum(e.size for e in eps),
            idle=sum(e.idle for e in eps),
            in_use=sum(e.in_use for e in eps),
            waiting=sum(e.waiting for e in eps),
            acquired_total=self._acquired,
            failovers_total=self._failovers,
            endpoints=eps,
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Close every endpoint's pool and wait (up to ``timeout``) for probes and drains."""
        if self._closed:
            return
        self._closed = True
        await self._keyed.close(timeout)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()

    async def __aenter__(self) -> AsyncEndpointPool[T, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        snaps = self._policy.snapshots(self._clock())
        eps = ", ".join(f"{s.name}:{s.state}" for s in snaps)
        state = " closed" if self._closed else ""
        return f"<AsyncEndpointPool {self.name!r}{state} {self._policy.strategy} [{eps}]>"
