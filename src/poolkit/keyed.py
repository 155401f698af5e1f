"""KeyedPool and AsyncKeyedPool: one sub-pool per key (host, tenant, shard) under a global cap."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ._endpoint_policy import redact
from ._permits import PermitLedger, Ticket, choose_victim
from ._types import Factory, PoolEvent, PoolStats, ResourceInfo, default_is_broken
from .errors import PoolClosed, PoolTimeout
from .pool import Lease, Pool

__all__ = [
    "KeyedFactory",
    "KeyedPool",
    "KeyedPoolStats",
]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

#: How often a budget waiter looks again for an idle resource of another key to close, in
#: case no release event woke it (a resource went idle in a pool it was not told about).
_EVICT_POLL_S = 0.05
#: A waiter scans the sub-pools for an idle resource to close when told one may have
#: appeared (a return or a creation), and at least this often (a safety net).
_RESCAN_S = 1.0
#: Retries of a borrow whose sub-pool was swept or discarded right under it.
_CLOSED_RETRIES = 3


# -- factories ------------------------------------------------------------------------------------


class KeyedFactory(Generic[K, R]):
    """Base class of factories for :class:`KeyedPool`: ``create(key)`` plus resource hooks.

    Override ``create`` (required) and any of ``destroy``, ``check``, ``reset``,
    ``is_broken``; they receive the resource only. For hooks that need the key, override
    :meth:`for_key` and return a :class:`poolkit.Factory` that remembers it.

    Example::

        class TenantConns(KeyedFactory[str, psycopg.Connection]):
            def create(self, tenant: str) -> psycopg.Connection:
                return psycopg.connect(DSN, options=f"-c search_path={tenant}")

            def destroy(self, conn: psycopg.Connection) -> None:
                conn.close()

        pool = KeyedPool(TenantConns(), max_per_key=4, max_total=20)
    """

    __module__ = "poolkit"

    def create(self, key: K) -> R:
        """Create a new resource for ``key``."""
        raise NotImplementedError(f"{type(self).__name__} must implement create(key)")

    def destroy(self, resource: R) -> None:
        """Release what ``resource`` holds."""

    def check(self, resource: R, info: ResourceInfo) -> bool:
        """Say whether an idle resource is still usable (may do I/O)."""
        return True

    def reset(self, resource: R) -> None:
        """Bring a returned resource back to a clean state; raising destroys it."""

    def is_broken(self, resource: R, exc: BaseException | None) -> bool:
        """Say, without I/O, whether the resource must be destroyed after use."""
        return default_is_broken(resource, exc)

    def for_key(self, key: K) -> Factory[R] | Callable[[], R]:
        """The factory of the sub-pool for ``key`` (default: this factory bound to ``key``)."""
        bound: Factory[R] | Callable[[], R] = _bind(self, KeyedFactory, key)
        return bound


class _Bound:
    """A keyed factory bound to one key: the sub-pool's factory (``.key`` tells which)."""

    __slots__ = ("check", "create", "destroy", "is_broken", "key", "reset")

    def __init__(self, key: Hashable, hooks: dict[str, Any]) -> None:
        self.key = key
        self.create: Callable[[], Any] = hooks["create"]
        self.destroy: Callable[..., Any] | None = hooks.get("destroy")
        self.check: Callable[..., Any] | None = hooks.get("check")
        self.reset: Callable[..., Any] | None = hooks.get("reset")
        self.is_broken: Callable[..., bool] | None = hooks.get("is_broken")


def _bind(factory: object, base: type, key: Hashable) -> Any:
    """Bind ``factory.create`` to ``key``; pass only the hooks the factory overrides."""
    hooks: dict[str, Any] = {"create": functools.partial(factory.create, key)}  # type: ignore[attr-defined]
    for name in ("destroy", "check", "reset", "is_broken"):
        if getattr(type(factory), name) is not getattr(base, name):
            hooks[name] = getattr(factory, name)
    return _Bound(key, hooks)


def _split_factory(
    create: Any, base: type, key: Hashable, hooks: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """What to hand a sub-pool: its factory/create callable and the keyword hooks."""
    if isinstance(create, base):
        made = create.for_key(key)  # type: ignore[attr-defined]
        if isinstance(made, _Bound):
            bound = {n: getattr(made, n) for n in ("destroy", "check", "reset", "is_broken")}
            merged = {n: hooks.get(n) or bound[n] for n in bound}
            return made.create, merged
        return made, hooks
    if callable(create):
        return functools.partial(create, key), hooks
    raise TypeError(
        f"create must be a callable create(key) or a {base.__name__}, not {type(create).__name__}"
    )


# -- stats ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyedPoolStats(Generic[K]):
    """A snapshot of a keyed pool: totals over every key and each key's :class:`PoolStats`.

    Example::

        s = pool.stats()
        print(f"{s.size}/{s.max_total} open over {s.keys} keys, {s.budget_waiting} waiting")
        print(s.per_key["tenant-a"].in_use)
    """

    name: str
    keys: int
    size: int
    idle: int
    in_use: int
    creating: int
    waiting: int
    max_per_key: int
    max_total: int | None
    permits_in_use: int
    budget_waiting: int
    evictions_total: int
    subpools_closed_total: int
    acquired_total: int
    timeouts_total: int
    created_total: int
    create_errors_total: int
    destroyed_total: int
    per_key: Mapping[K, PoolStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (per-key stats as dicts, keys as strings)."""
        out = {n: getattr(self, n) for n in self.__dataclass_fields__ if n != "per_key"}
        out["per_key"] = {str(k): s.as_dict() for k, s in self.per_key.items()}
        return out


def _sum_stats(
    name: str,
    *,
    per_key: dict[Any, PoolStats],
    max_per_key: int,
    max_total: int | None,
    ledger: PermitLedger | None,
    subpools_closed: int,
) -> KeyedPoolStats[Any]:
    vals = per_key.values()
    return KeyedPoolStats(
        name=name,
        keys=len(per_key),
        size=sum(s.size for s in vals),
        idle=sum(s.idle for s in vals),
        in_use=sum(s.in_use for s in vals),
        creating=sum(s.creating for s in vals),
        waiting=sum(s.waiting for s in vals),
        max_per_key=max_per_key,
        max_total=max_total,
        permits_in_use=ledger.in_use if ledger else 0,
        budget_waiting=ledger.waiting if ledger else 0,
        evictions_total=ledger.evictions_total if ledger else 0,
        subpools_closed_total=subpools_closed,
        acquired_total=sum(s.acquired_total for s in vals),
        timeouts_total=sum(s.timeouts_total for s in vals),
        created_total=sum(s.created_total for s in vals),
        create_errors_total=sum(s.create_errors_total for s in vals),
        destroyed_total=sum(s.destroyed_total for s in vals),
        per_key=MappingProxyType(per_key),
    )


def _check_limits(max_per_key: int, max_total: int | None, idle_timeout: float | None) -> None:
    if isinstance(max_per_key, bool) or not isinstance(max_per_key, int):
        raise TypeError(f"max_per_key must be an int, not {type(max_per_key).__name__}")
    if max_per_key < 1:
        raise ValueError(f"max_per_key ({max_per_key}) must be >= 1")
    if max_total is not None:
        if isinstance(max_total, bool) or not isinstance(max_total, int):
            raise TypeError(f"max_total must be an int or None, not {type(max_total).__name__}")
        if max_total < 1:
            raise ValueError(f"max_total ({max_total}) must be >= 1")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"idle_timeout ({idle_timeout}) must be > 0 or None")


def _cap_was_the_reason(ledger: PermitLedger, stats: PoolStats) -> bool:
    """After a timeout: was it the global cap (not the key's own limit) that kept it waiting?"""
    return ledger.free == 0 and stats.size < stats.max_size


def _fair_is_broken(
    factory: object, hooks: dict[str, Any], ledger: PermitLedger, key: Hashable
) -> Callable[[Any, BaseException | None], bool]:
    """``is_broken`` for a sub-pool under a global cap: the user's rule, and also True on a
    clean return while another key waits for a permit (its resource is closed so that the
    oldest waiter of any key gets the slot: a busy key cannot starve the others)."""
    user = hooks.get("is_broken") or getattr(factory, "is_broken", None) or default_is_broken

    def is_broken(resource: Any, exc: BaseException | None) -> bool:
        if user(resource, exc):
            return True
        head = ledger.head()
        return head is not None and head.key != key

    return is_broken


def _key_label(key: object) -> str:
    return redact(str(key))


def _budget_timeout(name: str, ledger: PermitLedger, key: object, waited: float) -> PoolTimeout:
    return PoolTimeout(
        f"keyed pool {name!r}: max_total ({ledger.max_total}) resources are open and none "
        f"of another key was idle to close within {waited:.2f}s (key {_key_label(key)}, "
        f"{ledger.waiting} waiting); raise max_total or the timeout",
        pool=name,
        phase="create",
        waited_s=waited,
    )


# -- thread shell: the shared budget --------------------------------------------------------------


class _SharedBudget:
    """The global cap of a :class:`KeyedPool`: one permit per open resource, FIFO across keys."""

    def __init__(self, owner: KeyedPool[Any, Any], max_total: int) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self.ledger = PermitLedger(max_total)
        self.closed = False
        #: bumped whenever a resource may have gone idle (a return or a creation anywhere)
        self.idle_epoch = 0

    def acquire(self, key: Hashable, timeout: float | None, pool: Pool[Any] | None) -> Ticket:
        ledger = self.ledger
        with self._lock:
            if self.closed:
                raise PoolClosed(f"keyed pool {self._owner.name!r} is closed")
            ticket = ledger.request(key)
            if ticket.granted:
                return ticket
            ticket.waker = threading.Event()
        if not self._owner._listening:
            self._owner._listen_for_releases()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        now = time.monotonic
        scanned_epoch, scanned_at = -1, start
        try:
            while True:
                if self.idle_epoch != scanned_epoch or now() - scanned_at >= _RESCAN_S:
                    scanned_epoch, scanned_at = self.idle_epoch, now()
                    self._evict_for(key)
                ticket.waker.clear()
                if ticket.granted:
                    return ticket
                if self.closed:
                    raise PoolClosed(f"keyed pool {self._owner.name!r} is closed")
                if pool is not None and pool.stats().waiting == 0:
                    # the borrower left (timed out): do not hold a place in the queue
                    raise _budget_timeout(self._owner.name, ledger, key, time.monotonic() - start)
                wait = _EVICT_POLL_S
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _budget_timeout(
                            self._owner.name, ledger, key, time.monotonic() - start
                        )
                    wait = min(wait, remaining)
                if ticket.waker.wait(wait) and ticket.granted:
                    return ticket
        except BaseException:
            with self._lock:
                passed = ledger.cancel(ticket)
            if passed is not None and passed.waker is not None:
                passed.waker.set()
            raise

    def _evict_for(self, key: Hashable) -> None:
        with self._lock:
            if not self.ledger.begin_eviction():
                return
        closed = 0
        try:
            pools = self._owner._live_pools()
            candidates = {k: p for k, p in pools if k != key}
            while candidates and not closed:
                victim = choose_victim((k, p.oldest_idle_at()) for k, p in candidates.items())
                if victim is None:
                    break
                closed = candidates.pop(victim).close_idle(1)
        finally:
            with self._lock:
                self.ledger.end_eviction(closed)

    def release(self, ticket: object) -> None:
        if not isinstance(ticket, Ticket):
            return
        with self._lock:
            nxt = self.ledger.release(ticket)
        if nxt is not None:
            nxt.waker.set()

    def nudge(self, _event: PoolEvent | None = None) -> None:
        """A resource went idle somewhere: let the oldest waiter look for one to close."""
        self.idle_epoch += 1
        head = self.ledger.head()
        if head is not None and head.waker is not None:
            head.waker.set()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            waiters = self.ledger.drain()
        for t in waiters:
            t.waker.set()


class _KeyBudget:
    """The :class:`poolkit.Budget` a sub-pool sees: the shared budget, tagged with its key."""

    __slots__ = ("_key", "_shared", "pool")

    def __init__(self, shared: _SharedBudget, key: Hashable) -> None:
        self._shared = shared
        self._key = key
        self.pool: Pool[Any] | None = None

    def acquire(self, timeout: float | None) -> object:
        return self._shared.acquire(self._key, timeout, self.pool)

    def release(self, token: object) -> None:
        self._shared.release(token)

    def status(self) -> str:
        return "ok"


# -- KeyedPool ------------------------------------------------------------------------------------


class KeyedPool(Generic[K, R]):
    """One :class:`poolkit.Pool` per key, created on first use, under a global cap.

    ``max_per_key`` bounds each key; ``max_total`` (optional) bounds all keys together:
    when it is reached and a key needs a new resource, the least recently used idle resource
    of another key is closed to make room, else the borrower waits in one queue shared by
    all keys (first come, first served). A key's sub-pool is closed and forgotten once it
    held nothing for ``idle_timeout`` seconds. Other keyword options (``acquire_timeout``,
    ``max_lifetime``, ``check_after_idle``...) go to every sub-pool.

    Example::

        pool = KeyedPool(lambda tenant: psycopg.connect(DSN, application_name=tenant),
                         destroy=lambda conn: conn.close(), max_per_key=4, max_total=20)
        with pool.acquire("tenant-a") as conn:
            conn.execute("SELECT 1")
        print(pool.stats().per_key["tenant-a"].size)
        pool.close()
    """

    __module__ = "poolkit"

    def __init__(
        self,
        create: Callable[[K], R] | KeyedFactory[K, R],
        *,
        max_per_key: int = 10,
        max_total: int | None = None,
        idle_timeout: float | None = 600.0,
        destroy: Callable[[R], None] | None = None,
        check: Callable[[R, ResourceInfo], bool] | None = None,
        reset: Callable[[R], None] | None = None,
        is_broken: Callable[[R, BaseException | None], bool] | None = None,
        name: str | None = None,
        **pool_options: Any,
    ) -> None:
        _check_limits(max_per_key, max_total, idle_timeout)
        for bad in ("max_size", "min_size", "budget", "create"):
            if bad in pool_options:
                raise TypeError(
                    f"KeyedPool does not take {bad}= (use max_per_key / max_total instead)"
                )
        if not (isinstance(create, KeyedFactory) or callable(create)):
            raise TypeError(
                "create must be a callable create(key) or a KeyedFactory, "
                f"not {type(create).__name__}"
            )
        self._create = create
        self._hooks = {"destroy": destroy, "check": check, "reset": reset, "is_broken": is_broken}
        self._options = pool_options
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self.name = name or f"keyed-{id(self):x}"
        self._pools: dict[K, Pool[R]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._budget = _SharedBudget(self, max_total) if max_total is not None else None
        self._empty_since: dict[K, float] = {}
        self._sweep_every = (
            float("inf") if idle_timeout is None else max(0.05, min(idle_timeout / 2, 30.0))
        )
        self._next_sweep = time.monotonic() + self._sweep_every
        self._subpools_closed = 0
        self._listening = False
        # fail fast on bad sub-pool options (a typo, a negative timeout) at construction
        Pool(_never_create, max_size=max_per_key, idle_timeout=idle_timeout, **pool_options).close()

    # -- sub-pools ----------------------------------------------------------------------------

    def pool_for(self, key: K) -> Pool[R]:
        """The sub-pool of ``key``, created (empty) if needed."""
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise PoolClosed(f"keyed pool {self.name!r} is closed")
            pool = self._pools.get(key)
            if pool is None:
                pool = self._make_pool(key)
                self._pools[key] = pool
            return pool

    def _make_pool(self, key: K) -> Pool[R]:
        factory, hooks = _split_factory(self._create, KeyedFactory, key, self._hooks)
        budget = _KeyBudget(self._budget, key) if self._budget is not None else None
        if self._budget is not None:
            hooks = {
                **hooks,
                "is_broken": _fair_is_broken(factory, hooks, self._budget.ledger, key),
            }
        pool: Pool[R] = Pool(
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
        return pool

    def _listen_for_releases(self) -> None:
        """The cap was reached once: from now on a resource going idle in any sub-pool
        wakes the oldest budget waiter (until then, no listener costs anything)."""
        with self._lock:
            if self._listening or self._budget is None:
                return
            self._listening = True
            for pool in self._pools.values():
                pool.on("release", self._budget.nudge)
                pool.on("create", self._budget.nudge)

    def _live_pools(self) -> list[tuple[K, Pool[R]]]:
        with self._lock:
            return list(self._pools.items())

    def keys(self) -> list[K]:
        """The keys that have a sub-pool right now."""
        with self._lock:
            return list(self._pools)

    def detach(self, key: K) -> Pool[R] | None:
        """Remove ``key``'s sub-pool from the pool without closing it; returns it (or None)."""
        with self._lock:
            self._empty_since.pop(key, None)
            return self._pools.pop(key, None)

    def discard(self, key: K, timeout: float = 5.0) -> bool:
        """Close ``key``'s sub-pool: its waiters get ``PoolClosed``, idle resources close at
        once and lent ones when they come back. The next borrow for ``key`` starts afresh."""
        pool = self.detach(key)
        if pool is None:
            return False
        pool.close(timeout)
        with self._lock:
            self._subpools_closed += 1
        return True

    def close_idle(self, key: K | None = None, count: int | None = None) -> int:
        """Close up to ``count`` idle resources of ``key`` (of every key when None)."""
        if key is not None:
            pool = self._pools.get(key)
            return pool.close_idle(count) if pool is not None else 0
        return sum(p.close_idle(count) for _, p in self._live_pools())

    def resize(self, max_per_key: int | None = None, max_total: int | None = None) -> None:
        """Change the limits at run time; idle resources above a lowered cap are closed
        (least recently used first), borrowed ones count until they come back.

        ``max_total`` can change only if the pool was built with one.
        """
        new_per_key = self.max_per_key if max_per_key is None else max_per_key
        new_total = self.max_total if max_total is None else max_total
        _check_limits(new_per_key, new_total, self.idle_timeout)
        if max_total is not None and self._budget is None:
            raise ValueError(
                f"max_total ({max_total}) cannot be set on keyed pool {self.name!r}, "
                "built without one; pass max_total= to the constructor"
            )
        self.max_per_key = new_per_key
        for _, pool in self._live_pools():
            pool.resize(max_size=new_per_key)
        budget = self._budget
        if budget is None or new_total is None:
            return
        self.max_total = new_total
        with budget._lock:
            woken = budget.ledger.resize(new_total)
        for ticket in woken:
            ticket.waker.set()
        for _ in range(max(0, budget.ledger.in_use - new_total)):
            pools: dict[Hashable, Pool[R]] = dict(self._live_pools())
            victim = choose_victim((k, p.oldest_idle_at()) for k, p in pools.items())
            if victim is None or not pools[victim].close_idle(1):
                break

    def sweep(self, now: float | None = None) -> int:
        """Close the sub-pools that held nothing for ``idle_timeout``; returns how many.

        Borrowing calls this now and then; call it yourself in a mostly idle process.
        """
        if self.idle_timeout is None:
            return 0
        now = time.monotonic() if now is None else now
        doomed: list[Pool[R]] = []
        with self._lock:
            self._next_sweep = now + self._sweep_every
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
            pool.close()
        return len(doomed)

    # -- borrowing ----------------------------------------------------------------------------

    def get(self, key: K, timeout: float | None = None, priority: int = 0) -> Lease[R]:
        """Borrow a resource for ``key``: a lease to ``release()`` (or use with ``with``).

        ``timeout=None`` means the pool's ``acquire_timeout``.
        """
        if time.monotonic() >= self._next_sweep:
            self.sweep()
        for _ in range(_CLOSED_RETRIES):
            pool = self.pool_for(key)
            try:
                return pool.get(timeout=timeout, priority=priority)
            except PoolTimeout as exc:
                budget = self._budget
                if budget is not None and _cap_was_the_reason(budget.ledger, pool.stats()):
                    raise _budget_timeout(self.name, budget.ledger, key, exc.waited_s) from exc
                raise
            except PoolClosed:
                if self._closed:
                    raise
                # swept or discarded between lookup and borrow: retry with a fresh sub-pool
                with self._lock:
                    if self._pools.get(key) is pool:
                        del self._pools[key]
        raise PoolClosed(f"keyed pool {self.name!r}: sub-pool for {_key_label(key)} kept closing")

    def acquire(self, key: K, timeout: float | None = None, priority: int = 0) -> Lease[R]:
        """``with pool.acquire(key) as r:`` borrow for the block; an error marks it broken.

        Like ``Pool.acquire`` it borrows at once and returns the lease (its ``with`` block
        yields the resource), the same as :meth:`get`.
        """
        return self.get(key, timeout, priority)

    # -- lifecycle and inspection -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closed

    def stats(self) -> KeyedPoolStats[K]:
        """Totals over every key and each key's :class:`PoolStats`."""
        per_key = {k: p.stats() for k, p in self._live_pools()}
        return _sum_stats(
            self.name,
            per_key=per_key,
            max_per_key=self.max_per_key,
            max_total=self.max_total,
            ledger=self._budget.ledger if self._budget else None,
            subpools_closed=self._subpools_closed,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Close every sub-pool: waiters get ``PoolClosed``; each waits up to ``timeout`` s
        for its borrowed resources. A second close is a no-op."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        if self._budget is not None:
            self._budget.close()
        deadline = time.monotonic() + timeout
        for pool in pools:
            pool.close(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> KeyedPool[K, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        cap = "" if self.max_total is None else f" max_total={self.max_total}"
        return (
            f"<KeyedPool {self.name!r}{state} keys={len(self._pools)} "
            f"max_per_key={self.max_per_key}{cap}>"
        )


def _never_create() -> Any:
    raise RuntimeError("validation pool never creates")
