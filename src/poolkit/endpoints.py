"""EndpointPool: one pool over equivalent endpoints (replicas), with balancing and ejection."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._endpoint_policy import STRATEGIES, EndpointPolicy, EndpointSnapshot, EndpointState, redact
from ._events import logger
from ._types import PoolStats, ResourceInfo
from .errors import PoolClosed, PoolTimeout, ResourceCreationError
from .keyed import KeyedFactory, KeyedPool, _Bound
from .pool import Lease, Pool

__all__ = [
    "STRATEGIES",
    "Endpoint",
    "EndpointLease",
    "EndpointPool",
    "EndpointPoolStats",
    "EndpointStats",
]

T = TypeVar("T")
R = TypeVar("R")

_HOOK_NAMES = ("destroy", "check", "reset", "is_broken")


@dataclass(frozen=True)
class Endpoint(Generic[T]):
    """One address of a service: the ``target`` handed to ``create`` (a DSN, a URL, a
    ``(host, port)``), a ``weight`` for the ``weighted`` strategy and a display ``name``.

    The name defaults to ``str(target)`` with passwords masked; the target itself never
    appears in a repr, a log line, a stat or an error message.

    Example::

        Endpoint("postgresql://app:secret@replica-1/app", weight=2)
        # -> Endpoint('postgresql://app:***@replica-1/app', weight=2.0)
    """

    __module__ = "poolkit"

    target: T = field(repr=False)
    weight: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", redact(self.name or str(self.target)))
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise TypeError(f"weight of endpoint {self.name} must be a number")
        if not self.weight > 0:
            raise ValueError(f"weight ({self.weight}) of endpoint {self.name} must be > 0")
        object.__setattr__(self, "weight", float(self.weight))

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, weight={self.weight})"


@dataclass(frozen=True)
class EndpointStats:
    """One endpoint's state and counters (``state``: healthy, ejected or probing).

    Example::

        down = [e.name for e in pool.stats().endpoints if e.state != "healthy"]
    """

    name: str
    state: EndpointState
    weight: float
    size: int
    idle: int
    in_use: int
    waiting: int
    errors_total: int
    consecutive_failures: int
    ejections_total: int
    ejected_for_s: float | None
    last_error: str | None


@dataclass(frozen=True)
class EndpointPoolStats:
    """A snapshot of an endpoint pool: totals and one :class:`EndpointStats` per endpoint.

    Example::

        for ep in pool.stats().endpoints:
            print(ep.name, ep.state, ep.in_use, ep.errors_total)
    """

    name: str
    strategy: str
    healthy: int
    size: int
    idle: int
    in_use: int
    waiting: int
    acquired_total: int
    failovers_total: int
    endpoints: tuple[EndpointStats, ...]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        out = {n: getattr(self, n) for n in self.__dataclass_fields__ if n != "endpoints"}
        out["endpoints"] = [vars(e).copy() for e in self.endpoints]
        return out


def _endpoint_stats(snap: EndpointSnapshot, pool: PoolStats | None) -> EndpointStats:
    return EndpointStats(
        name=snap.name,
        state=snap.state,
        weight=snap.weight,
        size=pool.size if pool else 0,
        idle=pool.idle if pool else 0,
        in_use=snap.in_use,
        waiting=pool.waiting if pool else 0,
        errors_total=snap.errors_total,
        consecutive_failures=snap.consecutive_failures,
        ejections_total=snap.ejections_total,
        ejected_for_s=snap.ejected_for_s,
        last_error=snap.last_error,
    )


def _as_endpoint(item: object) -> Endpoint[Any]:
    return item if isinstance(item, Endpoint) else Endpoint(item)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _user_hooks(
    create: Any, base: type, target: Any, keyword_hooks: dict[str, Any]
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The user's create bound to ``target`` and the resource hooks (keywords win)."""
    hooks: dict[str, Any] = {}
    if isinstance(create, base):
        bound_create = functools.partial(create.create, target)  # type: ignore[attr-defined]
        for name in _HOOK_NAMES:
            if getattr(type(create), name) is not getattr(base, name):
                hooks[name] = getattr(create, name)
    else:
        bound_create = functools.partial(create, target)
    for name, hook in keyword_hooks.items():
        if hook is not None:
            hooks[name] = hook
    return bound_create, hooks


def _all_down(name: str, policy: EndpointPolicy, now: float) -> PoolTimeout:
    snaps = policy.snapshots(now)
    if not snaps:
        return PoolTimeout(
            f"endpoint pool {name!r} has no endpoints; add one with add_endpoint()",
            pool=name,
            phase="create",
        )
    parts = []
    for s in snaps:
        when = f", next probe in {s.ejected_for_s:.1f}s" if s.ejected_for_s is not None else ""
        parts.append(f"{s.name} ({s.state}{when}): {s.last_error or 'no error recorded'}")
    return PoolTimeout(
        f"endpoint pool {name!r}: no endpoint is available; " + "; ".join(parts),
        pool=name,
        phase="create",
    )


class EndpointLease(Generic[R]):
    """A resource borrowed from an endpoint pool; ``.endpoint`` says where it points.

    Example::

        lease = pool.get()
        try:
            print(lease.endpoint.name)
            lease.resource.execute("SELECT 1")
        finally:
            lease.release()
    """

    __module__ = "poolkit"
    __slots__ = ("_counted", "_ep", "_lease", "_owner", "endpoint", "resource")

    def __init__(
        self, owner: EndpointPool[Any, R], ep: int, endpoint: Endpoint[Any], lease: Lease[R]
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
            self._owner._ended(self._ep)

    def release(self) -> None:
        """Give the resource back to its endpoint's pool."""
        try:
            self._lease.release()
        finally:
            self._end()

    def discard(self) -> None:
        """Destroy the resource instead of returning it."""
        try:
            self._lease.discard()
        finally:
            self._end()

    def __enter__(self) -> R:
        return self.resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._lease.__exit__(exc_type, exc, tb)
        finally:
            self._end()

    def __repr__(self) -> str:
        return f"<poolkit.EndpointLease {self.endpoint.name!r}>"


class _Acquire(Generic[R]):
    __slots__ = ("_args", "_lease", "_pool")

    def __init__(self, pool: EndpointPool[Any, R], args: tuple[float | None, int]) -> None:
        self._pool = pool
        self._args = args
        self._lease: EndpointLease[R] | None = None

    def __enter__(self) -> R:
        self._lease = self._pool.get(*self._args)
        return self._lease.resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        if lease is not None:
            self._lease = None
            lease.__exit__(exc_type, exc, tb)


class _Factory(KeyedFactory[int, Any]):
    """Builds each endpoint's sub-pool factory: the user's hooks, wrapped to feed the policy."""

    def __init__(self, owner: EndpointPool[Any, Any]) -> None:
        self._owner = owner

    def create(self, key: int) -> Any:  # pragma: no cover - for_key is used instead
        raise NotImplementedError

    def for_key(self, key: int) -> Any:
        owner = self._owner
        create, hooks = owner._hooks_for(key)
        hooks["create"] = functools.partial(owner._guarded_create, key, create)
        check = hooks.get("check")
        if check is not None:
            hooks["check"] = functools.partial(owner._guarded_check, key, check)
        return _Bound(key, hooks)


class EndpointPool(Generic[T, R]):
    """One pool over several endpoints serving the same thing (read replicas, an HTTP service
    behind several addresses). Each endpoint has its own sub-pool; ``acquire()`` picks one.

    Strategies: ``round_robin``, ``least_in_use``, ``random_two_choices``, ``weighted``
    (smooth weighted round robin), ``primary_first`` (fail over in the given order).
    An endpoint whose creations or checks fail ``failure_threshold`` times in a row is
    ejected: its sub-pool is closed (waiters move to other endpoints) and it gets no traffic
    for a backoff (``base_backoff`` doubling per ejection up to ``max_backoff``); then one
    trial resource is created in the background (half-open) and, if it works, the
    endpoint takes traffic again. With every endpoint down, ``acquire()`` fails at once
    with a :class:`PoolTimeout` naming each endpoint's last error.

    Example::

        pool = EndpointPool(psycopg.connect, ["host=replica1 dbname=app",
                                              "host=replica2 dbname=app"],
                            destroy=lambda c: c.close(), strategy="least_in_use",
                            max_per_endpoint=8, max_total=12)
        with pool.acquire() as conn:
            conn.execute("SELECT 1")
        for ep in pool.stats().endpoints:
            print(ep.name, ep.state, ep.in_use)
        pool.close()
    """

    __module__ = "poolkit"

    def __init__(
        self,
        create: Callable[[T], R] | KeyedFactory[T, R],
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
        destroy: Callable[[R], object] | None = None,
        check: Callable[[R, ResourceInfo], bool] | None = None,
        reset: Callable[[R], object] | None = None,
        is_broken: Callable[[R, BaseException | None], bool] | None = None,
        name: str | None = None,
        clock: Callable[[], float] | None = None,
        rng: Any = None,
        **pool_options: Any,
    ) -> None:
        if not (isinstance(create, KeyedFactory) or callable(create)):
            raise TypeError(
                "create must be a callable create(target) or a KeyedFactory, "
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
        self._lock = threading.Lock()
        self._endpoints: dict[int, Endpoint[T]] = {}
        self._closed = False
        self._acquire_timeout = acquire_timeout
        self._drain_timeout = drain_timeout
        self._failovers = 0
        self._acquired = 0
        self._background: set[threading.Thread] = set()
        self._keyed: KeyedPool[int, R] = KeyedPool(
            _Factory(self),
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
        with self._lock:
            if self._closed:
                raise PoolClosed(f"endpoint pool {self.name!r} is closed")
            if any(self._endpoints[i].name == ep.name for i in self._policy.ids()):
                raise ValueError(f"endpoint {ep.name} is already in pool {self.name!r}")
            ep_id = self._policy.add(ep.name, ep.weight)
            self._endpoints[ep_id] = ep
        return ep

    def remove_endpoint(self, endpoint: Endpoint[T] | str, *, wait: bool = False) -> None:
        """Stop sending traffic to an endpoint and drain it: idle resources close now,
        borrowed ones when returned (up to ``drain_timeout``). ``wait=True`` blocks until then.
        """
        wanted = endpoint.name if isinstance(endpoint, Endpoint) else endpoint
        with self._lock:
            found = [i for i in self._policy.ids() if self._endpoints[i].name == wanted]
            if not found:
                raise KeyError(f"no endpoint {wanted} in pool {self.name!r}")
            ep_id = found[0]
            self._policy.remove(ep_id)
            sub = self._keyed.detach(ep_id)
        if sub is not None:
            if wait:
                sub.close(self._drain_timeout)
            else:
                self._in_background(sub.close, self._drain_timeout)

    def endpoints(self) -> list[Endpoint[T]]:
        """The endpoints in rotation (whatever their state), in priority order."""
        with self._lock:
            return [self._endpoints[i] for i in self._policy.ids()]

    def _hooks_for(self, ep_id: int) -> tuple[Callable[[], Any], dict[str, Any]]:
        target = self._endpoints[ep_id].target
        return _user_hooks(self._create, KeyedFactory, target, self._keyword_hooks)

    # -- health ---------------------------------------------------------------------------------

    def _guarded_create(self, ep_id: int, create: Callable[[], R]) -> R:
        with self._lock:
            state = self._policy.state(ep_id) if ep_id in self._policy else "ejected"
        if state == "ejected":
            raise ResourceCreationError(
                f"endpoint {self._endpoints[ep_id].name} is ejected; not connecting"
            )
        try:
            resource = create()
        except Exception as exc:
            self._failed(ep_id, exc, "create")
            raise
        self._succeeded(ep_id, "create")
        return resource

    def _guarded_check(
        self, ep_id: int, check: Callable[[R, ResourceInfo], bool], resource: R, info: ResourceInfo
    ) -> bool:
        try:
            ok = bool(check(resource, info))
        except Exception as exc:
            self._failed(ep_id, exc, "check")
            raise
        if ok:
            self._succeeded(ep_id, "check")
        else:
            self._failed(ep_id, None, "check")
        return ok

    def _succeeded(self, ep_id: int, kind: str) -> None:
        with self._lock:
            rejoined = self._policy.on_success(ep_id, self._clock(), kind)
        if rejoined:
            logger.info(
                "poolkit: endpoint pool %r: %s is back", self.name, self._endpoints[ep_id].name
            )

    def _failed(self, ep_id: int, exc: BaseException | None, kind: str) -> None:
        error = "check failed" if exc is None else _describe(exc)
        sub: Pool[R] | None = None
        with self._lock:
            now = self._clock()
            ejected = self._policy.on_failure(ep_id, now, error, kind)
            if ejected:
                snap = self._policy.snapshot(ep_id, now)
                sub = self._keyed.detach(ep_id)
        if ejected:
            logger.warning(
                "poolkit: endpoint pool %r: %s ejected for %.1fs after %d failure(s): %s",
                self.name,
                snap.name,
                snap.ejected_for_s or 0.0,
                snap.consecutive_failures,
                error,
            )
        if sub is not None:
            # waiters get PoolClosed at once and go to another endpoint; idle ones close
            self._in_background(sub.close, self._drain_timeout)

    def _in_background(self, fn: Callable[..., object], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception:
                logger.exception("poolkit: endpoint pool %r: background task failed", self.name)
            finally:
                with self._lock:
                    self._background.discard(thread)

        thread = threading.Thread(target=run, name=f"poolkit-{self.name}", daemon=True)
        with self._lock:
            self._background.add(thread)
        thread.start()

    def _start_probes(self, now: float, *, inline: bool = False) -> list[int]:
        with self._lock:
            due = [i for i in self._policy.due_probes(now) if self._policy.start_probe(i)]
        for ep_id in due:
            if inline:
                self._probe(ep_id)
            else:
                self._in_background(self._probe, ep_id)
        return due

    def probe(self) -> list[Endpoint[T]]:
        """Probe now, in this thread, every ejected endpoint whose backoff has run out;
        returns those that are healthy again. (Borrowing starts due probes in the background.)
        """
        probed = self._start_probes(self._clock(), inline=True)
        with self._lock:
            return [
                self._endpoints[i]
                for i in probed
                if i in self._policy and self._policy.state(i) == "healthy"
            ]

    def _probe(self, ep_id: int) -> None:
        """Half-open: one trial resource, checked and destroyed; success lets traffic back."""
        create, hooks = self._hooks_for(ep_id)
        error: BaseException | None = None
        ok = False
        try:
            resource = create()
        except Exception as exc:
            error = exc
        else:
            try:
                check = hooks.get("check")
                ok = bool(check(resource, ResourceInfo(0, 0.0, 0.0, 0))) if check else True
            except Exception as exc:
                error = exc
            finally:
                destroy = hooks.get("destroy")
                if destroy is not None:
                    try:
                        destroy(resource)
                    except Exception as exc:
                        logger.debug("poolkit: probe resource destroy failed: %r", exc)
        if ok:
            self._succeeded(ep_id, "probe")
        else:
            self._failed(ep_id, error, "probe")

    def _ended(self, ep_id: int) -> None:
        with self._lock:
            self._policy.end(ep_id)

    # -- borrowing ------------------------------------------------------------------------------

    def _borrow(self, sub: Pool[R], ep_id: int, timeout: float, priority: int) -> Lease[R]:
        try:
            return sub.get(timeout=timeout, priority=priority)
        except BaseException:
            with self._lock:
                self._policy.end(ep_id)
                self._acquired -= 1
            raise

    def get(self, timeout: float | None = None, priority: int = 0) -> EndpointLease[R]:
        """Borrow from the endpoint the strategy picks; fails over while endpoints drop out."""
        clock = self._clock
        now = clock()
        deadline = now + (self._acquire_timeout if timeout is None else timeout)
        policy = self._policy
        keyed = self._keyed
        for attempt in range(len(self._endpoints) + 3):
            if now >= policy.next_probe_at():
                self._start_probes(now)
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"endpoint pool {self.name!r} is closed")
                ep_id = policy.pick(now)
                if ep_id is None:
                    raise _all_down(self.name, policy, now)
                sub = keyed.pool_for(ep_id)
                # counted from now: borrowers on their way to an endpoint spread the load too
                policy.begin(ep_id)
                self._acquired += 1
                if attempt:
                    self._failovers += 1
            try:
                lease = self._borrow(sub, ep_id, max(0.0, deadline - now), priority)
            except PoolClosed:
                if self._closed:
                    raise
                now = clock()  # ejected or removed meanwhile: pick another endpoint
                continue
            except PoolTimeout as exc:
                now = clock()
                with self._lock:
                    healthy = ep_id in policy and policy.state(ep_id) == "healthy"
                if not healthy and now < deadline:
                    continue
                raise PoolTimeout(
                    f"endpoint pool {self.name!r}: {exc}",
                    pool=self.name,
                    phase=exc.phase,
                    waited_s=exc.waited_s,
                ) from exc
            return EndpointLease(self, ep_id, self._endpoints[ep_id], lease)
        raise _all_down(self.name, policy, clock())

    def acquire(self, timeout: float | None = None, priority: int = 0) -> _Acquire[R]:
        """``with pool.acquire() as r:`` borrow for the block (see :meth:`get`)."""
        return _Acquire(self, (timeout, priority))

    # -- lifecycle and inspection ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closed

    def stats(self) -> EndpointPoolStats:
        """Per-endpoint state and counters, plus totals."""
        per_key = self._keyed.stats().per_key
        with self._lock:
            now = self._clock()
            snaps = self._policy.snapshots(now)
            acquired, failovers = self._acquired, self._failovers
        eps = tuple(_endpoint_stats(s, per_key.get(s.id)) for s in snaps)
        return EndpointPoolStats(
            name=self.name,
            strategy=self._policy.strategy,
            healthy=sum(1 for e in eps if e.state == "healthy"),
            size=sum(e.size for e in eps),
            idle=sum(e.idle for e in eps),
            in_use=sum(e.in_use for e in eps),
            waiting=sum(e.waiting for e in eps),
            acquired_total=acquired,
            failovers_total=failovers,
            endpoints=eps,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Close every endpoint's pool and wait (up to ``timeout``) for background work."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._keyed.close(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._background)
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> EndpointPool[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            snaps = self._policy.snapshots(self._clock())
        eps = ", ".join(f"{s.name}:{s.state}" for s in snaps)
        state = " closed" if self._closed else ""
        return f"<EndpointPool {self.name!r}{state} {self._policy.strategy} [{eps}]>"
