"""The thread-safe pool: one lock around the policy core, all I/O outside it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from . import _maintenance
from ._config import PoolConfig
from ._core import FAILED, IN_USE, SERVED, Entry, Waiter
from ._events import logger
from ._shell import ShellBase, resolve_hooks
from ._types import Budget, Factory
from .errors import PoolClosed, PoolFull, ReleaseError, ResourceCreationError

__all__ = ["Lease", "Pool"]

R = TypeVar("R")

_allocate_lock = threading.Lock
_new_lease = object.__new__


class Lease(Generic[R]):
    """One borrowed resource: ``.resource``, then ``release()`` or ``discard()`` exactly once.

    A lease is also a context manager yielding the resource, which is what
    ``pool.acquire()`` returns.

    Example::

        lease = pool.get(timeout=2.0)
        try:
            lease.resource.send(b"ping")
        except OSError:
            lease.discard()
            raise
        else:
            lease.release()
    """

    __module__ = "poolkit"
    __slots__ = ("_entry", "_pool", "resource")

    def __init__(self, pool: Pool[R], entry: Entry) -> None:
        self._pool = pool
        self._entry: Entry | None = entry
        self.resource: R = entry.resource

    @property
    def id(self) -> int:
        """The pooled resource's id (stable for the resource's life)."""
        entry = self._entry
        if entry is None:
            raise ReleaseError("this lease was already released")
        return entry.id

    @property
    def released(self) -> bool:
        """True once the lease was released or discarded."""
        return self._entry is None

    def release(self) -> None:
        """Reset the resource and give it back to the pool."""
        self.__exit__(None, None, None)

    def discard(self) -> None:
        """Destroy the resource instead of returning it (it is known to be broken)."""
        self.__exit__(None, True, None)

    def __enter__(self) -> R:
        return self.resource

    def __exit__(
        self, exc_type: object, exc: BaseException | bool | None, tb: TracebackType | None
    ) -> None:
        # The return half of the hot path, kept in one frame; ``exc=True`` means discard.
        entry = self._entry
        if entry is None:
            raise ReleaseError(f"{self!r} was already released")
        if entry.state != IN_USE:
            raise ReleaseError(f"{self!r} does not hold resource #{entry.id} any more")
        self._entry = None
        pool = self._pool
        reason = None
        if exc is not None or pool._custom_is_broken:
            reason = pool._triage(entry, exc)
        if reason is None and pool._reset is not None:
            reason = pool._run_reset(entry)
        now = pool._clock()
        core = pool._core
        lock = pool._lock
        lock.acquire()
        try:
            if reason is None:
                waiter = core.give_back(entry, now)
            else:
                core.discard(entry, reason, now)
                waiter = None
        finally:
            lock.release()
        if waiter is not None:
            waiter.wake()
        if pool._on_release:
            pool._emit("release", entry, duration_s=now - entry.borrowed_at)
        if core.trash:
            pool._flush()

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:
            self._pool._leaked(entry)

    def __repr__(self) -> str:
        state = "released" if self._entry is None else f"#{self._entry.id}"
        return f"<poolkit.Lease {state} of pool {self._pool.name!r}>"


class _ThreadWaiter(Waiter):
    __slots__ = ("lock",)

    def __init__(self, priority: int, deadline: float) -> None:
        super().__init__(priority, deadline)
        self.lock = _allocate_lock()
        self.lock.acquire()

    def wake(self) -> None:
        self.lock.release()


class Pool(ShellBase, Generic[R]):
    """A thread-safe pool of reusable resources of any kind.

    Build it from a ``create`` callable or a :class:`poolkit.Factory`; keyword hooks
    (``destroy``, ``check``, ``reset``, ``is_broken``) override the factory's methods.

    Example::

        import sqlite3, poolkit

        with poolkit.Pool(lambda: sqlite3.connect(":memory:", check_same_thread=False),
                          destroy=lambda c: c.close(), max_size=4) as pool:
            with pool.acquire() as conn:
                conn.execute("select 1")

    Parameters:
        min_size: resources kept open even when idle (created by ``open`` and maintenance).
        max_size: hard cap on resources that exist, counting those being created.
        acquire_timeout: seconds a borrower waits by default (never forever by default).
        max_waiting: borrowers allowed to queue; more get :class:`PoolFull` (0 = unbounded).
        idle_timeout: close resources idle this long, down to ``min_size`` (None = never).
        max_lifetime: close resources this old (each gets up to 5 % less, so they do not
            all expire together; None = never).
        max_uses: close a resource after this many borrows (None = never).
        check_after_idle: run ``check`` on borrow only after this many idle seconds
            (0 = always, None = never).
        order: ``"lifo"`` (warm resources first, lets the rest expire) or ``"fifo"``.
        leak_timeout: report a resource held longer than this, with its borrow site.
        name: shown in reprs, logs, stats and metrics.
        create_backoff: first delay before retrying a failed creation; it doubles (with
            jitter) up to ``create_backoff_max`` while creation keeps failing.
        budget: a :class:`poolkit.Budget` whose permit is taken before each creation.
    """

    __module__ = "poolkit"

    def __init__(
        self,
        factory: Factory[R] | Callable[[], R] | None = None,
        /,
        *,
        create: Callable[[], R] | None = None,
        destroy: Callable[[R], object] | None = None,
        check: Callable[..., bool] | None = None,
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
        budget: Budget | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        hooks = resolve_hooks(
            factory,
            Factory,
            {
                "create": create,
                "destroy": destroy,
                "check": check,
                "reset": reset,
                "is_broken": is_broken,
            },
        )
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
        self._lock = _allocate_lock()
        self._init_shell(config, hooks, clock)
        self._started = False
        self._leaked_entries: deque[Entry] = deque()
        self._drained = threading.Event()

    def _reinit_after_fork(self) -> None:
        super()._reinit_after_fork()
        self._lock = _allocate_lock()
        self._leaked_entries = deque()
        self._drained = threading.Event()
        self._started = False

    # -- borrowing ----------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None, priority: int = 0) -> Lease[R]:
        """Borrow a resource for a ``with`` block: ``with pool.acquire() as r: ...``.

        On a clean exit the resource is reset and returned; when the block raises and
        ``is_broken`` says so (or reset fails) it is destroyed and its slot freed.
        Raises :class:`PoolTimeout`, :class:`PoolFull` or :class:`PoolClosed`.
        """
        now = self._clock()
        lock = self._lock
        lock.acquire()  # explicit acquire/release: half the cost of `with` on CPython 3.11
        try:
            entry = self._core.take(now)
        finally:
            lock.release()
        if entry is not None and now - entry.last_used < self._fast_window:
            lease = _new_lease(Lease)
            lease._pool = self
            lease._entry = entry
            lease.resource = entry.resource
            if self._on_acquire:
                self._emit("acquire", entry, duration_s=0.0)
            return lease
        return self._acquire_slow(entry, now, timeout, priority)

    get = acquire

    def _acquire_slow(
        self, entry: Entry | None, now: float, timeout: float | None, priority: int
    ) -> Lease[R]:
        if timeout is None:
            timeout = self._core.config.acquire_timeout
        elif timeout < 0:
            if entry is not None:
                self._give_back_unused(entry)
            raise ValueError(f"timeout ({timeout}) must be >= 0")
        start = now
        deadline = now + timeout
        if not self._started:
            self._start()
        self._flush()
        waited = 0.0
        while True:
            if entry is not None:
                if now - entry.last_used >= self._check_window and not self._run_check(entry, now):
                    entry = None
                    now = self._clock()
                    if now >= deadline:
                        with self._lock:
                            self._core.count_timeout()
                        raise self._timeout_error(now - start, "check")
                    continue
                lease = Lease(self, entry)
                if self._track_leaks:
                    self._borrow_site(entry)
                self._emit("acquire", entry, duration_s=waited)
                return lease
            waiter: _ThreadWaiter | None = None
            with self._lock:
                core = self._core
                if core.closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                entry = core.take_any(now)
                if entry is None:
                    if not core.can_wait():
                        raise PoolFull(
                            f"pool {self.name!r}: {core.waiting} borrowers already waiting "
                            f"(max_waiting={core.config.max_waiting}); {core.snapshot()}"
                        )
                    waiter = _ThreadWaiter(priority, deadline)
                    core.enqueue(waiter, now)
                    creations = core.plan_creates(now)
            if waiter is None:
                self._flush()
                continue
            self._spawn_creators(creations)
            entry = self._wait(waiter, deadline, start)
            now = self._clock()
            waited = now - start
            # a handed-over resource was just returned or just created: no check needed
            lease = Lease(self, entry)
            if self._track_leaks:
                self._borrow_site(entry)
            self._emit("acquire", entry, duration_s=waited)
            return lease

    def _wait(self, waiter: _ThreadWaiter, deadline: float, start: float) -> Entry:
        try:
            waiter.lock.acquire(timeout=max(deadline - self._clock(), 0.0))
        except BaseException:  # KeyboardInterrupt and friends: leave the queue cleanly
            with self._lock:
                withdrawn = self._core.cancel(waiter, timed_out=False)
            if not withdrawn and waiter.state == SERVED and waiter.entry is not None:
                self._give_back_unused(waiter.entry)
            raise
        with self._lock:
            if waiter.state == SERVED:
                assert waiter.entry is not None
                return waiter.entry
            if waiter.state != FAILED:
                self._core.cancel(waiter, timed_out=True)
        if waiter.state == FAILED:
            raise PoolClosed(f"pool {self.name!r} was closed while waiting")
        waited = self._clock() - start
        error = self._timeout_error(waited, "wait")
        self._emit("timeout", None, duration_s=waited, error=error.__cause__)
        raise error

    def _give_back_unused(self, entry: Entry) -> None:
        """Return an entry that was taken but never lent out (an interrupted borrow)."""
        with self._lock:
            waiter = self._core.give_back(entry, self._clock())
        if waiter is not None:
            waiter.wake()
        self._flush()

    def _run_check(self, entry: Entry, now: float) -> bool:
        check = self._hooks.check
        assert check is not None
        try:
            ok = bool(check(entry.resource, self._info(entry, now)))
        except Exception as exc:
            logger.debug("poolkit: pool %r: check of #%d raised %r", self.name, entry.id, exc)
            ok = False
        if not ok:
            with self._lock:
                self._core.discard(entry, "check", self._clock())
            self._flush()
        return ok

    # -- returning ----------------------------------------------------------------------------

    def release(self, lease: Lease[R]) -> None:
        """Return ``lease`` (the same as ``lease.release()``); a foreign lease raises."""
        if not isinstance(lease, Lease) or lease._pool is not self:
            raise ReleaseError(f"{lease!r} was not lent by pool {self.name!r}")
        lease.release()

    def _run_reset(self, entry: Entry) -> str | None:
        assert self._reset is not None
        try:
            self._reset(entry.resource)
        except Exception as exc:
            logger.debug("poolkit: pool %r: reset of #%d failed: %r", self.name, entry.id, exc)
            return "reset"
        return None

    def _leaked(self, entry: Entry) -> None:
        """A lease was garbage-collected unreleased (called from ``__del__``: never block)."""
        self._leaked_entries.append(entry)
        _maintenance.scheduler.wake(self)

    # -- creating and destroying --------------------------------------------------------------

    def _spawn_creators(self, count: int) -> None:
        for _ in range(count):
            try:
                _maintenance.workers.submit(self._create_loop)
            except BaseException as exc:  # cannot start a thread: undo the reservation
                with self._lock:
                    self._core.create_failed(exc, self._clock())
                raise

    def _create_one(self) -> Entry:
        """Create one resource (already counted in ``creating``) and hand it over."""
        start = self._clock()
        token = None
        budget = self._budget
        try:
            if budget is not None:
                with self._lock:
                    time_left = self._core.time_left(start)
                # a little less than the waiter's time: a refusal then arrives while it still
                # waits, and becomes its PoolTimeout's cause
                token = budget.acquire(time_left * 0.8)
            resource = self._hooks.create()
        except BaseException as exc:  # KeyboardInterrupt too: the permit and slot come back
            if token is not None:
                self._release_token(token)
            now = self._clock()
            with self._lock:
                self._core.create_failed(exc, now)
            if isinstance(exc, Exception):
                logger.debug("poolkit: pool %r: create failed: %r", self.name, exc)
                self._emit("create_error", None, duration_s=now - start, error=exc)
            raise
        now = self._clock()
        with self._lock:
            entry, waiter = self._core.created(resource, now, token)
        if waiter is not None:
            waiter.wake()
        self._flush()
        self._emit("create", entry, duration_s=now - start)
        return entry

    def _create_loop(self) -> None:
        while True:
            try:
                self._create_one()
                return
            except Exception:
                pass
            core = self._core
            if core.closed:
                return
            # back off, then try again while somebody still needs a resource
            delay = max(core.next_create_at - self._clock(), 0.0)
            if self._drained.wait(delay):  # set by close(): stop retrying
                return
            with self._lock:
                count = self._core.plan_creates(self._clock())
            if count == 0:
                return
            self._spawn_creators(count - 1)

    def _flush(self) -> None:
        """Destroy retired entries and start the creations the pool now needs."""
        core = self._core
        if self._leaked_entries:
            self._reclaim_leaked()
        with self._lock:
            trash = core.drain_trash() if core.trash else ()
            creations = core.plan_creates(self._clock())
            drained = core.closed and not core.in_use
        for entry, reason in trash:
            self._destroy(entry, reason)
        if creations:
            self._spawn_creators(creations)
        if drained:
            self._drained.set()

    def _destroy(self, entry: Entry, reason: str) -> None:
        destroy = self._hooks.destroy
        if destroy is not None:
            try:
                destroy(entry.resource)
            except Exception as exc:
                self._log_destroy_error(entry, exc)
        if entry.token is not None:
            self._release_token(entry.token)
        self._emit("destroy", entry, reason=reason)

    def _release_token(self, token: object) -> None:
        assert self._budget is not None
        try:
            self._budget.release(token)
        except Exception as exc:
            logger.warning("poolkit: pool %r: budget release failed: %r", self.name, exc)

    def _reclaim_leaked(self) -> None:
        now = self._clock()
        reclaimed = []
        while self._leaked_entries:
            entry = self._leaked_entries.popleft()
            with self._lock:
                if self._core.reclaim_leaked(entry, now):
                    reclaimed.append(entry)
        for entry in reclaimed:
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

    def _start(self) -> None:
        with self._lock:
            if self._started or self._core.closed:
                return
            self._started = True
        _maintenance.scheduler.add(self, self._core.config.maintenance_interval)

    def open(self, wait: bool = True) -> None:
        """Start background maintenance and create ``min_size`` resources.

        With ``wait=True`` the resources are created before returning, and the creation
        error is raised (as :class:`ResourceCreationError`) if none could be made; with
        ``wait=False`` they are created in the background.
        """
        if self._core.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        self._start()
        if not wait:
            self._flush()
            return
        made = 0
        error: BaseException | None = None
        with self._lock:
            planned = self._core.reserve_warm()
        for attempt in range(planned):
            try:
                self._create_one()
                made += 1
            except Exception as exc:
                error = exc
                with self._lock:
                    self._core.unreserve(planned - attempt - 1)
                break
        if error is not None and made == 0 and self._core.size == 0:
            raise ResourceCreationError(
                f"pool {self.name!r}: could not create any of min_size="
                f"{self._core.config.min_size} resources: {type(error).__name__}"
            ) from error
        self._flush()

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new borrowers, fail waiters, wait up to ``timeout`` s for borrowed
        resources, destroy everything and stop background work. A second call does nothing.
        """
        with self._lock:
            if self._core.closed:
                return
            waiters = self._core.close()
        for waiter in waiters:
            waiter.wake()
        self._flush()
        if not self._drained.wait(timeout):
            logger.warning(
                "poolkit: pool %r closed with %d resource(s) still borrowed after %.1fs; "
                "they will be destroyed when returned",
                self.name,
                self._core.in_use,
                timeout or 0.0,
            )

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change ``min_size``/``max_size`` at run time (validated like the constructor)."""
        with self._lock:
            self._core.resize(min_size, max_size)
        self._flush()

    def close_idle(self, count: int | None = None) -> int:
        """Close up to ``count`` idle resources (all when None), least recently used first."""
        with self._lock:
            closed = self._core.close_idle(count)
        self._flush()
        return closed

    def maintain(self) -> None:
        """Run one round of maintenance now (a shared background thread does this periodically)."""
        now = self._clock()
        if self._leaked_entries:
            self._reclaim_leaked()
        with self._lock:
            leaked = self._core.maintain(now)
        if leaked:
            self._report_leaks(leaked, now)
        self._flush()

    def __enter__(self) -> Pool[R]:
        self.open(wait=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
