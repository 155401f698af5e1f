"""Public value types and protocols shared by every pool: factories, stats, events, health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

from .errors import PoolError

__all__ = [
    "AsyncBudget",
    "AsyncFactory",
    "Budget",
    "Factory",
    "Health",
    "PoolEvent",
    "PoolStats",
    "ResourceInfo",
    "default_is_broken",
]

R = TypeVar("R")

BROKEN_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, EOFError)


def default_is_broken(resource: object, exc: BaseException | None) -> bool:
    """The default rule: an ``OSError``/``ConnectionError``/``EOFError`` (never poolkit's own)."""
    return exc is not None and isinstance(exc, BROKEN_ERRORS) and not isinstance(exc, PoolError)


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """What a ``check`` hook knows about the resource it checks.

    Example::

        def check(conn, info: ResourceInfo) -> bool:
            return info.uses < 1000 and conn.ping()
    """

    id: int
    age_s: float
    idle_s: float
    uses: int  #: times lent, counting the borrow being checked


class Factory(Generic[R]):
    """Base class of resource factories for :class:`poolkit.Pool`; override ``create``.

    Every other hook has a default: ``destroy`` does nothing, ``check`` accepts,
    ``reset`` does nothing, ``is_broken`` applies :func:`default_is_broken`.

    Example::

        class Conns(poolkit.Factory[sqlite3.Connection]):
            def create(self) -> sqlite3.Connection:
                return sqlite3.connect("app.db", check_same_thread=False)

            def destroy(self, conn: sqlite3.Connection) -> None:
                conn.close()

        pool = poolkit.Pool(Conns(), max_size=4)
    """

    __module__ = "poolkit"

    def create(self) -> R:
        """Create a new resource (may block, may raise)."""
        raise NotImplementedError(f"{type(self).__name__} must implement create()")

    def destroy(self, resource: R) -> None:
        """Release what ``resource`` holds; errors are logged, never raised to borrowers."""

    def check(self, resource: R, info: ResourceInfo) -> bool:
        """Say whether an idle resource is still usable (may do I/O)."""
        return True

    def reset(self, resource: R) -> None:
        """Bring a returned resource back to a clean state; raising destroys it."""

    def is_broken(self, resource: R, exc: BaseException | None) -> bool:
        """Say, without I/O, whether the resource must be destroyed after use."""
        return default_is_broken(resource, exc)


class AsyncFactory(Generic[R]):
    """Base class of resource factories for :class:`poolkit.AsyncPool`; override ``create``.

    ``create``, ``destroy``, ``check`` and ``reset`` are coroutines; ``is_broken`` is plain.

    Example::

        class Conns(poolkit.AsyncFactory[asyncpg.Connection]):
            async def create(self) -> asyncpg.Connection:
                return await asyncpg.connect(dsn)

            async def destroy(self, conn: asyncpg.Connection) -> None:
                await conn.close()
    """

    __module__ = "poolkit"

    async def create(self) -> R:
        """Create a new resource."""
        raise NotImplementedError(f"{type(self).__name__} must implement create()")

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


@runtime_checkable
class Budget(Protocol):
    """Creation permits shared beyond one pool (a keyed pool's total cap, a fleet-wide budget).

    The pool calls ``acquire`` outside its lock just before creating a resource and
    ``release`` after destroying it.
    """

    def acquire(self, timeout: float | None) -> object:
        """Block up to ``timeout`` seconds for a permit and return its token; raise to refuse."""
        ...

    def release(self, token: object) -> None:
        """Give a permit back."""
        ...

    def status(self) -> str:
        """``"ok"``, ``"degraded"`` or ``"unavailable"``."""
        ...


@runtime_checkable
class AsyncBudget(Protocol):
    """The asyncio twin of :class:`Budget`."""

    async def acquire(self, timeout: float | None) -> object:
        """Wait up to ``timeout`` seconds for a permit and return its token; raise to refuse."""
        ...

    async def release(self, token: object) -> None:
        """Give a permit back."""
        ...

    def status(self) -> str:
        """``"ok"``, ``"degraded"`` or ``"unavailable"``."""
        ...


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of a pool's gauges and counters.

    Example::

        s = pool.stats()
        print(f"{s.in_use}/{s.max_size} in use, {s.waiting} waiting, {s.timeouts_total} timeouts")
    """

    name: str
    size: int
    idle: int
    in_use: int
    creating: int
    waiting: int
    min_size: int
    max_size: int
    acquired_total: int
    waited_total: int
    wait_time_total_s: float
    timeouts_total: int
    created_total: int
    create_errors_total: int
    destroyed_total: int
    closed_idle_total: int
    closed_lifetime_total: int
    closed_broken_total: int
    check_failed_total: int
    leaks_total: int
    usage_time_total_s: float
    closed_max_uses_total: int = 0
    closed_reset_total: int = 0
    rejected_total: int = 0
    closed: bool = False
    budget_status: str | None = None
    last_create_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for logs and JSON)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


EventKind = Literal["create", "create_error", "acquire", "release", "destroy", "timeout", "leak"]
EVENT_KINDS: tuple[str, ...] = (
    "create",
    "create_error",
    "acquire",
    "release",
    "destroy",
    "timeout",
    "leak",
)


class PoolEvent(NamedTuple):
    """What a listener registered with ``pool.on(kind, callback)`` receives (immutable).

    ``duration_s`` is the creation time (``create``), the wait (``acquire``, ``timeout``) or
    the time held (``release``, ``leak``). ``reason`` says why a resource was destroyed.
    A named tuple rather than a frozen dataclass: it is built on the hot path whenever a
    listener is attached, and costs a third as much.

    Example::

        pool.on("timeout", lambda ev: log.warning("%s waited %.1fs", ev.pool, ev.duration_s))
    """

    kind: str
    pool: str
    resource_id: int | None = None
    duration_s: float | None = None
    reason: str | None = None
    error: BaseException | None = None
    stack: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """A pool's readiness: ``ok``, ``degraded`` (serving, with trouble) or ``failing``.

    Example::

        h = pool.health()
        if h.status == "failing":
            return 503, "; ".join(h.reasons)
    """

    status: Literal["ok", "degraded", "failing"]
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the status is ``ok``."""
        return self.status == "ok"
