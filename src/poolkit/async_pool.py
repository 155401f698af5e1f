"""The asyncio pool: the same policy core, driven from one event loop without a lock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._config import PoolConfig
from ._core import FAILED, IN_USE, SERVED, WAITING, Entry, Waiter
from ._events import logger
from ._shell import ShellBase, resolve_hooks
from ._types import AsyncBudget, AsyncFactory
from .errors import PoolClosed, PoolError, PoolFull, ReleaseError, ResourceCreationError

__all__ = ["AsyncLease", "AsyncPool"]

R = TypeVar("R")
_running_loop = asyncio.get_running_loop
_new_lease = object.__new__
T = TypeVar("T")


def _as_async(hook: Callable[..., Any] | None) -> Callable[..., Awaitable[Any]] | None:
    """Make a sync-or-async hook awaitable."""
    if hook is None:
        return None
    if inspect.iscoroutinefunction(hook):
        return hook

    async def call(*args: Any) -> Any:
        result = hook(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


class AsyncLease(Generic[R]):
    """One resource borrowed from an :class:`AsyncPool`.

    ``async with pool.acquire() as r`` borrows on entry and returns on exit;
    ``lease = await pool.get()`` borrows at once, then ``await lease.release()``.

    Example::

        async with pool.acquire(timeout=2.0) as conn:
            await conn.execute("select 1")
    """

    __module__ = "poolkit"
    __slots__ = ("_entry", "_pool", "_priority", "_timeout", "resource")
    resource: R

    def __init__(self, pool: AsyncPool[R], timeout: float | None, priority: int) -> None:
        self._pool = pool
        self._entry: Entry | None = None
        self._timeout = timeout
        self._priority = priority

    @property
    def id(self) -> int:
        """The pooled resource's id."""
        entry = self._entry
        if entry is None:
            raise ReleaseError("this lease holds no resource")
        return entry.id

    @property
    def released(self) -> bool:
        """True when the lease holds no resource (not yet borrowed, or given back)."""
        return self._entry is None

    async def release(self) -> None:
        """Reset the resource and give it back to the pool."""
        await self.__aexit__(None, None, None)

    async def discard(self) -> None:
        """Destroy the resource instead of returning it."""
        await self.__aexit__(None, True, None)

    async def __aenter__(self) -> R:
        # The borrow half of the hot path, kept in one frame.
        if self._entry is not None:
            raise ReleaseError(f"{self!r} is already borrowed")
        pool = self._pool
        if pool._loop is not _running_loop():
            pool._bind()
        now = pool._clock()
        entry = pool._core.take(now)
        if entry is not None and now - entry.last_used < pool._fast_window:
            self._entry = entry
            resource: R = entry.resource
            self.resource = resource
            if pool._on_acquire:
                pool._emit("acquire", entry, duration_s=0.0)
            return resource
        await pool._borrow_slow(self, entry, now, self._timeout, self._priority)
        return self.resource

    async def __aexit__(
        self, exc_type: object, exc: BaseException | bool | None, tb: TracebackType | None
    ) -> None:
        # The return half of the hot path; the slow cases are in AsyncPool._release_slow.
        entry = self._entry
        pool = self._pool
        if (
            exc is None
            and entry is not None
            and entry.state == IN_USE
            and pool._reset is None
            and not pool._custom_is_broken
        ):
            self._entry = None
            now = pool._clock()
            core = pool._core
            waiter = core.give_back(entry, now)
            if waiter is not None:
                waiter.wake()
            if pool._on_release:
                pool._emit("release", entry, duration_s=now - entry.borrowed_at)
            if core.trash:
                pool._flush()
            return
        await pool._release_slow(self, exc)

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:
            self._pool._leaked(entry)

    def __repr__(self) -> str:
        state = "empty" if self._entry is None else f"#{self._entry.id}"
        return f"<poolkit.AsyncLease {state} of pool {self._pool.name!r}>"


class _FutureWaiter(Waiter):
    __slots__ = ("future",)

    def __init__(self, priority: int, deadline: float, future: asyncio.Future[None]) -> None:
        super().__init__(priority, deadline)
        self.future = future

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class AsyncPool(ShellBase, Generic[R]):
    """An asyncio pool of reusable resources; hooks may be sync or async.

    It belongs to the event loop that first uses it; using it from another loop or thread
    raises ``RuntimeError``. Options are those of :class:`poolkit.Pool`.

    Example::

        async def main() -> None:
            async with poolkit.AsyncPool(make_client, destroy=close_client, max_size=8) as pool:
                async with pool.acquire() as client:
                    await client.get("/")
    """

    __module__ = "poolkit"

    def __init__(
        self,
        factory: AsyncFactory[R] | Callable[[], Awaitable[R] | R] | None = None,
        /,
        *,
        create: Callable[[], Awaitable[R] | R] | None = None,
        destroy: Callable[[R], object] | None = None,
        check: Callable[..., object] | None = None,
        reset: Callable[[R], object] | None = None,
        is_broken: Callable[[R, BaseException | None], bool] | None = None,
        min_size: int = 0,
        max_size: int = 10,
        acquire_timeout: float = 30.0,
        max_waiting: int = 0,
        idle_timeout: float | None = 600.0,
        max_lifetime: float | None = 3600.0,
        max_uses: int | None = None,
        check_after_idle: float | None = 0.5,
        order: str = "lifo",
        leak_timeout: float | None = None,
        name: str | None = None,
        create_backoff: float = 0.05,
        create_backoff_max: float = 10.0,
        budget: AsyncBudget | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        hooks = resolve_hooks(
            factory,
            AsyncFactory,
            {
                "create": create,
                "destroy": destroy,
                "check": check,
                "reset": reset,
                "is_broken": is_broken,
            },
        )
        for name_ in ("create", "destroy", "check", "reset"):
            setattr(hooks, name_, _as_async(getattr(hooks, name_)))
        config = PoolConfig(
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=acquire_timeout,
            max_waiting=max_waiting,
            idle_timeout=idle_timeout,
            max_lifetime=max_lifetime,
            max_uses=max_uses,
            check_after_idle=check_after_idle,
            order=order,
            leak_timeout=leak_timeout,
            name=name or "",
            create_backoff=create_backoff,
            create_backoff_max=create_backoff_max,
        )
        self._budget = budget
        self._init_shell(config, hooks, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leaked_entries: deque[Entry] = deque()
        self._wakeup: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._maintainer: asyncio.Task[None] | None = None

    def _reinit_after_fork(self) -> None:
        super()._reinit_after_fork()
        self._loop = None
        self._tasks = set()
        self._leaked_entries = deque()
        self._wakeup = None
        self._drained = None
        self._maintainer = None

    # -- loop ownership -----------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._drained = asyncio.Event()
            self._maintainer = loop.create_task(
                _maintain_forever(
                    weakref.ref(self), self._wakeup, self._config.maintenance_interval
                ),
                name=f"poolkit-maintenance-{self.name}",
            )
        elif self._loop is not loop:
            raise RuntimeError(
                f"AsyncPool {self.name!r} belongs to another event loop; an AsyncPool "
                "must be used from the loop (and thread) that first used it"
            )
        return loop

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- borrowing ----------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None, priority: int = 0) -> AsyncLease[R]:
        """Borrow for an ``async with`` block: ``async with pool.acquire() as r: ...``."""
        lease = _new_lease(AsyncLease)
        lease._pool = self
        lease._entry = None
        lease._timeout = timeout
        lease._priority = priority
        return lease

    async def get(self, timeout: float | None = None, priority: int = 0) -> AsyncLease[R]:
        """Borrow a resource now; give it back with ``await lease.release()``."""
        lease = AsyncLease(self, timeout, priority)
        await lease.__aenter__()
        return lease

    async def _borrow_slow(
        self,
        lease: AsyncLease[R],
        entry: Entry | None,
        now: float,
        timeout: float | None,
        priority: int,
    ) -> None:
        if timeout is None:
            timeout = self._core.config.acquire_timeout
        elif timeout < 0:
            if entry is not None:
                self._give_back_unused(entry)
            raise ValueError(f"timeout ({timeout}) must be >= 0")
        start = now
        deadline = now + timeout
        self._flush()
        waited = 0.0
        while True:
            if entry is not None:
                if now - entry.last_used >= self._check_window:
                    try:
                        ok = await self._run_check(entry, now)
                    except BaseException:
                        # cancelled mid-check: the resource may be half-way through a
                        # round trip, so it is destroyed (never reused) and its slot freed
                        self._core.discard(entry, "check", self._clock())
                        self._flush()
                        raise
                    if not ok:
                        entry = None
                        now = self._clock()
                        if now >= deadline:
                            self._core.count_timeout()
                            raise self._timeout_error(now - start, "check")
                        continue
                break
            core = self._core
            if core.closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            entry = core.take_any(now)
            if entry is not None:
                self._flush()
                continue
            if not core.can_wait():
                raise PoolFull(
                    f"pool {self.name!r}: {core.waiting} borrowers already waiting "
                    f"(max_waiting={core.config.max_waiting}); {core.snapshot()}"
                )
            entry = await self._wait(priority, deadline, start)
            waited = self._clock() - start
            break  # a handed-over resource was just returned or created: no check needed
        lease._entry = entry
        lease.resource = entry.resource
        if self._track_leaks:
            self._borrow_site(entry)
        self._emit("acquire", entry, duration_s=waited)

    async def _wait(self, priority: int, deadline: float, start: float) -> Entry:
        loop = self._loop
        assert loop is not None
        core = self._core
        waiter = _FutureWaiter(priority, deadline, loop.create_future())
        core.enqueue(waiter, self._clock())
        self._spawn_creators(core.plan_creates(self._clock()))
        timer = loop.call_later(max(deadline - self._clock(), 0.0), waiter.wake)
        try:
            await waiter.future
        except BaseException:
            # cancelled: leave the queue, or give back what was handed over meanwhile
            if not core.cancel(waiter, timed_out=False) and waiter.state == SERVED:
                assert waiter.entry is not None
                self._give_back_unused(waiter.entry)
            raise
        finally:
            timer.cancel()
        if waiter.state == SERVED:
            assert waiter.entry is not None
            return waiter.entry
        if waiter.state == FAILED:
            raise PoolClosed(f"pool {self.name!r} was closed while waiting")
        if waiter.state == WAITING:
            core.cancel(waiter, timed_out=True)
        waited = self._clock() - start
        error = self._timeout_error(waited, "wait")
        self._emit("timeout", None, duration_s=waited, error=error.__cause__)
        raise error

    def _give_back_unused(self, entry: Entry) -> None:
        waiter = self._core.give_back(entry, self._clock())
        if waiter is not None:
            waiter.wake()
        self._flush()

    async def _run_check(self, entry: Entry, now: float) -> bool:
        check = self._hooks.check
        assert check is not None
        try:
            ok = bool(await check(entry.resource, self._info(entry, now)))
        except Exception as exc:
            logger.debug("poolkit: pool %r: check of #%d raised %r", self.name, entry.id, exc)
            ok = False
        if not ok:
            self._core.discard(entry, "check", self._clock())
            self._flush()
        return ok

    # -- returning ----------------------------------------------------------------------------

    async def release(self, lease: AsyncLease[R]) -> None:
        """Return ``lease`` (the same as ``await lease.release()``); a foreign lease raises."""
        if not isinstance(lease, AsyncLease) or lease._pool is not self:
            raise ReleaseError(f"{lease!r} was not lent by pool {self.name!r}")
        await lease.__aexit__(None, None, None)

    async def _release_slow(self, lease: AsyncLease[R], exc: BaseException | bool | None) -> None:
        entry = lease._entry
        if entry is None:
            raise ReleaseError(f"{lease!r} was already released")
        if entry.state != IN_USE:
            raise ReleaseError(f"{lease!r} does not hold resource #{entry.id} any more")
        lease._entry = None
        reason = None
        if exc is not None or self._custom_is_broken:
            reason = self._triage(entry, exc)
        hooks = self._hooks
        if reason is None and hooks.reset is not None:
            if isinstance(exc, asyncio.CancelledError):
                # the borrower is being cancelled: reset in the background, bounded, so the
                # cancellation is not held up and the slot is never lost
                self._spawn(self._reset_later(entry))
                return
            try:
                await hooks.reset(entry.resource)
            except BaseException as reset_error:  # cancelled mid-reset: destroy, keep the slot
                logger.debug(
                    "poolkit: pool %r: reset of #%d failed: %r", self.name, entry.id, reset_error
                )
                self._finish_release(entry, "reset")
                if not isinstance(reset_error, Exception):
                    raise
                return
        self._finish_release(entry, reason)

    async def _reset_later(self, entry: Entry) -> None:
        reset = self._hooks.reset
        assert reset is not None
        reason = None
        try:
            await asyncio.wait_for(reset(entry.resource), self._core.config.acquire_timeout)
        except BaseException as exc:
            logger.debug("poolkit: pool %r: reset of #%d failed: %r", self.name, entry.id, exc)
            reason = "reset"
        self._finish_release(entry, reason)

    def _finish_release(self, entry: Entry, reason: str | None) -> None:
        now = self._clock()
        core = self._core
        if reason is None:
            waiter = core.give_back(entry, now)
            if waiter is not None:
                waiter.wake()
        else:
            core.discard(entry, reason, now)
        if self._on_release:
            self._emit("release", entry, duration_s=now - entry.borrowed_at)
        if core.trash:
            self._flush()

    def _leaked(self, entry: Entry) -> None:
        """A lease was garbage-collected unreleased (from ``__del__``, maybe another thread)."""
        self._leaked_entries.append(entry)
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wakeup.set)

    # -- creating and destroying --------------------------------------------------------------

    def _spawn_creators(self, count: int) -> None:
        for _ in range(count):
            self._spawn(self._create_loop())

    async def _create_one(self) -> Entry:
        start = self._clock()
        token = None
        budget = self._budget
        create = self._hooks.create
        try:
            if budget is not None:
                # a little less than the waiter's time, so a refusal becomes the timeout's cause
                token = await budget.acquire(self._core.time_left(start) * 0.8)
            resource = await create()
        except BaseException as exc:
            if token is not None:
                self._spawn(self._release_token(token))
            now = self._clock()
            self._core.create_failed(exc, now)
            if isinstance(exc, Exception):
                logger.debug("poolkit: pool %r: create failed: %r", self.name, exc)
                self._emit("create_error", None, duration_s=now - start, error=exc)
            raise
        now = self._clock()
        entry, waiter = self._core.created(resource, now, token)
        if waiter is not None:
            waiter.wake()
        self._flush()
        self._emit("create", entry, duration_s=now - start)
        return entry

    async def _create_loop(self) -> None:
        while True:
            try:
                await self._create_one()
                return
            except asyncio.CancelledError:
                return
            except Exception:
                pass
            core = self._core
            if core.closed:
                return
            await asyncio.sleep(max(core.next_create_at - self._clock(), 0.0))
            count = self._core.plan_creates(self._clock())
            if count == 0:
                return
            self._spawn_creators(count - 1)

    def _flush(self) -> None:
        """Destroy retired entries (in tasks) and start the creations now needed."""
        core = self._core
        if self._leaked_entries:
            self._reclaim_leaked()
        if core.trash:
            for entry, reason in core.drain_trash():
                self._spawn(self._destroy(entry, reason))
        self._spawn_creators(core.plan_creates(self._clock()))
        if core.closed and not core.in_use and self._drained is not None:
            self._drained.set()

    async def _destroy(self, entry: Entry, reason: str) -> None:
        destroy = self._hooks.destroy
        if destroy is not None:
            try:
                await destroy(entry.resource)
            except Exception as exc:
                self._log_destroy_error(entry, exc)
        if entry.token is not None:
            await self._release_token(entry.token)
        self._emit("destroy", entry, reason=reason)

    async def _release_token(self, token: object) -> None:
        assert self._budget is not None
        try:
            await self._budget.release(token)
        except Exception as exc:
            logger.warning("poolkit: pool %r: budget release failed: %r", self.name, exc)

    def _reclaim_leaked(self) -> None:
        now = self._clock()
        while self._leaked_entries:
            entry = self._leaked_entries.popleft()
            if self._core.reclaim_leaked(entry, now):
                logger.warning(
                    "poolkit: pool %r: resource #%d was never released (its lease was garbage-"
                    "collected after %.1fs); it is destroyed and its slot freed%s",
                    self.name,
                    entry.id,
                    now - entry.borrowed_at,
                    "; borrowed at:\n" + entry.stack if entry.stack else "",
                )
                self._emit("leak", entry, duration_s=now - entry.borrowed_at, stack=entry.stack)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, wait: bool = True) -> None:
        """Start maintenance and create ``min_size`` resources (see :meth:`Pool.open`)."""
        if self._core.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        self._bind()
        if not wait:
            self._flush()
            return
        made = 0
        error: BaseException | None = None
        core = self._core
        planned = core.reserve_warm()
        for attempt in range(planned):
            try:
                await self._create_one()
                made += 1
            except Exception as exc:
                error = exc
                core.unreserve(planned - attempt - 1)
                break
        if error is not None and made == 0 and core.size == 0:
            raise ResourceCreationError(
                f"pool {self.name!r}: could not create any of min_size="
                f"{core.config.min_size} resources: {type(error).__name__}"
            ) from error
        self._flush()

    async def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new borrowers, fail waiters, wait up to ``timeout`` s for borrowed
        resources, destroy everything and stop background tasks. A second call does nothing.
        """
        core = self._core
        if core.closed:
            return
        for waiter in core.close():
            waiter.wake()
        if self._loop is None:
            return
        self._flush()
        assert self._drained is not None and self._wakeup is not None
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "poolkit: pool %r closed with %d resource(s) still borrowed after %.1fs; "
                "they will be destroyed when returned",
                self.name,
                core.in_use,
                timeout or 0.0,
            )
        self._wakeup.set()
        pending = [task for task in self._tasks if task is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=None if timeout is None else max(timeout, 1.0))
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer

    async def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change ``min_size``/``max_size`` at run time."""
        self._core.resize(min_size, max_size)
        if self._loop is not None:
            self._flush()

    async def close_idle(self, count: int | None = None) -> int:
        """Close up to ``count`` idle resources (all when None), least recently used first."""
        closed = self._core.close_idle(count)
        if self._loop is not None:
            self._flush()
        return closed

    async def maintain(self) -> None:
        """Run one round of maintenance now (the background task does this periodically)."""
        self._bind()
        now = self._clock()
        if self._leaked_entries:
            self._reclaim_leaked()
        leaked = self._core.maintain(now)
        if leaked:
            self._report_leaks(leaked, now)
        self._flush()

    async def __aenter__(self) -> AsyncPool[R]:
        await self.open(wait=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _maintain_forever(
    ref: weakref.ref[AsyncPool[Any]], wakeup: asyncio.Event, interval: float
) -> None:
    """The maintenance task: holds only a weak reference to its pool."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wakeup.wait(), interval)
        wakeup.clear()
        pool = ref()
        if pool is None or pool._core.closed or pool._wakeup is not wakeup:
            return
        try:
            await pool.maintain()
        except PoolError:
            pass
        except Exception:
            logger.exception("poolkit: maintenance of pool %r failed", pool.name)
        del pool
