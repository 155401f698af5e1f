"""``AsyncRedisBudget``: the fleet-wide Redis lease semaphore for ``AsyncPool`` (redis.asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from poolkit.cluster import _scripts
from poolkit.cluster._common import (
    MIN_BLOCK_S,
    POLL_CAP_S,
    POLL_START_S,
    BudgetExhausted,
    BudgetState,
    BudgetToken,
    Config,
    Grant,
    Refusal,
    decode_holders,
    log,
    make_config,
    parse_acquire,
    parse_renew,
    release_args,
    renew_args,
)
from poolkit.cluster._sync import REDIS_DOWN
from poolkit.errors import PoolClosed

try:  # redis-py >= 5 has a separate asyncio Retry class
    from redis.asyncio.retry import Retry as _AsyncRetry
except ImportError:  # pragma: no cover - older redis-py
    _AsyncRetry = SyncRetry  # type: ignore[assignment,misc]


class AsyncRedisBudget(BudgetState):
    """The asyncio twin of :class:`~poolkit.cluster.RedisBudget` (same keys, same scripts:
    sync and async processes can share one budget).

    The renewal runs as one task per budget object, started by the first ``acquire`` in the
    running loop; ``await budget.close()`` stops it and gives back leases still held.

    Example::

        from poolkit import AsyncPool
        from poolkit.cluster import AsyncRedisBudget

        budget = AsyncRedisBudget("redis://127.0.0.1:6379/0", "orders-db", limit=100)
        pool = AsyncPool(connect, max_size=20, budget=budget)
        ...
        await pool.close()
        await budget.close()
    """

    def __init__(
        self,
        url: str | aioredis.Redis,
        name: str,
        limit: int,
        *,
        lease_ttl: float = 10.0,
        renew_interval: float | None = None,
        min_per_process: int | None = None,
        max_per_process: int | None = None,
        mode: str = "strict",
        fallback_limit: int | None = None,
        restart_quiet: float | None = None,
        socket_timeout: float | None = None,
        key_prefix: str = "poolkit:budget",
    ) -> None:
        self._cfg: Config = make_config(
            name=name,
            limit=limit,
            lease_ttl=lease_ttl,
            renew_interval=renew_interval,
            min_per_process=min_per_process,
            max_per_process=max_per_process,
            mode=mode,
            fallback_limit=fallback_limit,
            restart_quiet=restart_quiet,
            socket_timeout=socket_timeout,
            key_prefix=key_prefix,
        )
        cfg = self._cfg
        if isinstance(url, str):
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url,
                socket_timeout=cfg.socket_timeout + POLL_CAP_S,
                socket_connect_timeout=cfg.socket_timeout,
                retry=_AsyncRetry(NoBackoff(), 1),
            )
            self._owns_client = True
        elif isinstance(url, aioredis.Redis):
            self._redis = url
            self._owns_client = False
        else:
            raise TypeError(
                f"url ({type(url).__name__}) must be a redis:// URL or a redis.asyncio.Redis"
            )
        self._keys = cfg.keys()
        self._acquire_script = self._redis.register_script(_scripts.ACQUIRE)
        self._renew_script = self._redis.register_script(_scripts.RENEW)
        self._release_script = self._redis.register_script(_scripts.RELEASE)
        self._closed = False
        self._lock = contextlib.nullcontext()  # one event loop: _held needs no lock
        self._freed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reset_state()

    async def acquire(self, timeout: float | None = None) -> BudgetToken:
        """Take one lease, waiting up to ``timeout`` seconds (``None``: no limit).

        Raises ``BudgetExhausted`` when none is free in time, ``BudgetUnavailable`` when
        Redis is unreachable and the mode refuses to grow, ``PoolClosed`` after ``close()``.
        """
        if self._closed:
            raise PoolClosed(f"budget {self._cfg.name!r} is closed")
        self._ensure_renewer()
        cfg = self._cfg
        start = time.monotonic()
        deadline = None if timeout is None else start + max(0.0, timeout)
        delay = POLL_START_S
        last: Refusal | None = None
        while True:
            if cfg.max_per_process and len(self._held) >= cfg.max_per_process:
                wait = _remaining(deadline, POLL_CAP_S)
                if wait <= 0:
                    r = last or Refusal("max", self._server_count or 0, len(self._held), 0, 0)
                    raise await self._exhausted(r, time.monotonic() - start)
                self._freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), wait)
                continue
            try:
                reply = await self._acquire_script(keys=self._keys, args=self._acquire_argv)
            except REDIS_DOWN as e:
                self._mark_down(e, "acquire")
                return self._local_grant(e)
            self._mark_up()
            res = parse_acquire(reply)
            if isinstance(res, Grant):
                token = self._granted(res)
                if self._closed:  # closed while the script ran: do not leak the lease
                    await self.release(token)
                    raise PoolClosed(f"budget {cfg.name!r} is closed")
                return token
            last = res
            remaining = _remaining(deadline, 3600.0)
            if remaining <= 0:
                raise await self._exhausted(res, time.monotonic() - start)
            if res.reason == "quiet":
                await asyncio.sleep(min(remaining, res.wait_ms / 1000 + 0.005))
            elif res.reason == "max":
                self._freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), min(remaining, delay))
            else:
                await self._block_for_wake(min(remaining, delay))
            delay = min(delay * 2, POLL_CAP_S)
            if self._closed:
                raise PoolClosed(f"budget {cfg.name!r} is closed")

    async def release(self, token: object) -> None:
        """Give a lease back. Never raises for Redis trouble: a lease that cannot be removed
        is logged and simply expires on the server after ``lease_ttl``."""
        if not isinstance(token, BudgetToken) or token.budget != self._cfg.name:
            raise ValueError(f"budget {self._cfg.name!r}: {token!r} is not one of its tokens")
        present = self._held.pop(token.member, None)
        self._freed.set()
        if present is None:
            return
        await self._remove_on_server([token.member])

    async def holders(self) -> dict[str, int]:
        """Leases per process as Redis sees them now (one HGETALL; raises Redis errors)."""
        raw = await self._redis.hgetall(self._keys[1])
        return decode_holders(raw)

    async def renew(self) -> None:
        """Renew every lease of this process in ONE script call now (the background task
        does this every ``renew_interval``). Never raises for Redis trouble."""
        members = list(self._held)
        try:
            reply = await self._renew_script(
                keys=self._keys, args=renew_args(self._cfg, self._proc, members)
            )
        except REDIS_DOWN as e:
            self._renew_failures += 1
            self._mark_down(e, "renew")
            return
        except redis.RedisError as e:
            self._renew_failures += 1
            log.error("budget %r: renew failed: %s", self._cfg.name, e)
            return
        self._mark_up()
        gone = self._renewed(parse_renew(reply))
        if gone:  # released while the renewal was in flight: remove them again
            await self._remove_on_server(gone)

    async def close(self) -> None:
        """Stop the renewal task, give back every lease still held, close the Redis client
        (if this object created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._freed.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        members = list(self._held)
        self._held.clear()
        if members:
            await self._remove_on_server(members)
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> AsyncRedisBudget:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------
    async def _exhausted(self, r: Refusal, waited: float) -> BudgetExhausted:
        holders: dict[str, int] | None = None
        try:
            holders = await self.holders()
        except (redis.RedisError, OSError):
            holders = None
        return self._refused(r, waited, holders)

    async def _block_for_wake(self, seconds: float) -> None:
        try:
            await self._redis.blpop([self._keys[4]], timeout=max(MIN_BLOCK_S, seconds))
        except REDIS_DOWN as e:
            self._mark_down(e, "wait")

    async def _remove_on_server(self, members: list[str]) -> None:
        try:
            await self._release_script(
                keys=self._keys, args=release_args(self._cfg, self._proc, members)
            )
        except REDIS_DOWN as e:
            self._release_failed(e, len(members))
        except redis.RedisError as e:
            log.error("budget %r: release failed: %s", self._cfg.name, e)
        else:
            self._mark_up()

    def _ensure_renewer(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"poolkit-budget-{self._cfg.name}"
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.renew_interval)
            try:
                await self.renew()
            except Exception:  # never let the renewer die
                log.exception("budget %r: unexpected error while renewing", self._cfg.name)


def _remaining(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    return min(cap, deadline - time.monotonic())
