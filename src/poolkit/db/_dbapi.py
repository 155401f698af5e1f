"""Factories for any DB-API 2 driver: the base every database factory builds on."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .._types import AsyncFactory, Factory, ResourceInfo, default_is_broken
from ._common import BrokenConnectionError, call_reset, validate_reset
from ._url import redact, scrub_exception, secret_values

__all__ = ["AsyncDBFactory", "DBAPIFactory", "DBFactory"]


class _Settings:
    """Options every database factory shares (a mixin; no I/O)."""

    backend = "dbapi"
    paramstyle = "qmark"
    reset_modes: tuple[str, ...] = ("rollback", "none")

    def _setup(
        self,
        *,
        reset: object,
        check_after_idle: float | None,
        ping_timeout: float,
        secrets: Iterable[str],
        label: str,
    ) -> None:
        validate_reset(reset, self.reset_modes)
        if check_after_idle is not None and check_after_idle < 0:
            raise ValueError(f"check_after_idle ({check_after_idle}) must be >= 0 or None")
        if ping_timeout <= 0:
            raise ValueError(f"ping_timeout ({ping_timeout}) must be > 0")
        self.reset_mode: object = reset
        self.ping_after_idle = check_after_idle
        self.ping_timeout = float(ping_timeout)
        self._secrets = tuple(s for s in secrets if s)
        self.label = redact(label, self._secrets)

    def secrets(self) -> tuple[str, ...]:
        """The secret strings to scrub from errors (passwords)."""
        return self._secrets

    def scrub(self, exc: BaseException) -> BaseException:
        """Remove this factory's secrets from ``exc`` and its chain."""
        return scrub_exception(exc, self._secrets)

    def wants_ping(self, info: ResourceInfo) -> bool:
        """True when the connection sat idle long enough to deserve a round-trip check."""
        after = self.ping_after_idle
        return after is not None and info.idle_s >= after

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} reset={self.reset_mode!r}>"


class DBFactory(_Settings, Factory[Any]):
    """Base of the thread-side database factories (``sqlite3``, DuckDB, psycopg, PyMySQL...).

    Adds the database hooks to :class:`poolkit.Factory`: ``close()`` (end of the pool),
    ``secrets()`` (what to scrub from errors) and ``paramstyle``. Subclass it for a driver
    poolkit does not ship, or use :class:`DBAPIFactory` with a connect function.

    Example::

        class MyDriverFactory(DBFactory):
            def create(self):
                return mydriver.connect(...)
    """

    def close(self) -> None:
        """Release what the factory itself holds (DuckDB: the database instance)."""

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        """One transaction on ``conn``: commit on success, roll back on error."""
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def destroy(self, resource: Any) -> None:
        """Close the connection; errors are ignored (the pool logs them)."""
        resource.close()


class AsyncDBFactory(_Settings, AsyncFactory[Any]):
    """Base of the asyncio database factories (psycopg async, asyncpg, aiomysql).

    Example::

        class MyAsyncFactory(AsyncDBFactory):
            async def create(self):
                return await mydriver.connect(...)
    """

    async def close(self) -> None:
        """Release what the factory itself holds."""

    async def execute(self, conn: Any, sql: str, params: Any) -> int:
        """Run a statement; return the affected row count (-1 if unknown)."""
        raise NotImplementedError

    async def fetchall(self, conn: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple."""
        raise NotImplementedError

    async def fetchone(self, conn: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
        """Run a query and return its first row as a tuple, or ``None``."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def transaction(self, conn: Any) -> AsyncIterator[Any]:
        """One transaction on ``conn``: commit on success, roll back on error."""
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()

    async def commit(self, conn: Any) -> None:
        """Commit what ``execute`` did (drivers that autocommit make this a no-op)."""
        await conn.commit()


class DBAPIFactory(DBFactory):
    """Pool connections of any DB-API 2 driver from its ``connect`` function.

    ``reset="rollback"`` (default) calls ``conn.rollback()`` on every return unless the
    connection says it is outside a transaction (``in_transaction`` is False, as in
    ``sqlite3``). A connection is *broken* (destroyed, not reused) when the ``with`` block
    raised one of ``broken_errors`` (default: the driver's ``InterfaceError``, found on the
    connect function's module, plus OS-level errors) or its ``closed`` attribute is true.
    ``check`` runs ``ping_sql`` when the connection sat idle for ``check_after_idle`` s.

    Example::

        import sqlite3
        from poolkit.db import DBPool

        db = DBPool(connect=sqlite3.connect, args=("app.db",),
                    kwargs={"check_same_thread": False}, max_size=4)
        db.fetchall("SELECT 1")
    """

    def __init__(
        self,
        connect: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        ping_sql: str = "SELECT 1",
        broken_errors: tuple[type[BaseException], ...] | None = None,
        paramstyle: str | None = None,
    ) -> None:
        if not callable(connect):
            raise TypeError(f"connect must be callable, not {type(connect).__name__}")
        self._connect = connect
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        secrets = secret_values(self._kwargs)
        name = getattr(connect, "__qualname__", None) or type(connect).__name__
        module = getattr(connect, "__module__", None) or ""
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=f"{module}.{name}".lstrip("."),
        )
        self._ping_sql = ping_sql
        mod = sys.modules.get(module.split(".")[0]) if module else None
        if broken_errors is None:
            iface = getattr(mod, "InterfaceError", None)
            broken_errors = (iface,) if isinstance(iface, type) else ()
        self._broken_errors = broken_errors
        self.paramstyle = paramstyle or str(getattr(mod, "paramstyle", "qmark"))

    def create(self) -> Any:
        """Call the connect function; secrets are scrubbed from any error it raises."""
        try:
            return self._connect(*self._args, **self._kwargs)
        except BaseException as exc:
            self.scrub(exc)
            raise

    def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Closed flag first; ``ping_sql`` only after ``check_after_idle`` seconds idle."""
        if getattr(resource, "closed", False):
            return False
        if not self.wants_ping(info):
            return True
        cur = resource.cursor()
        try:
            cur.execute(self._ping_sql)
            cur.fetchall()
        finally:
            cur.close()
        return True

    def reset(self, resource: Any) -> None:
        """Roll back (skipped when the driver reports no open transaction), then ``reset``."""
        mode = self.reset_mode
        if mode == "none":
            return
        if getattr(resource, "in_transaction", True):
            resource.rollback()
        if callable(mode):
            call_reset(mode, resource)

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Closed connection, ``InterfaceError`` or OS-level error: destroy it."""
        if getattr(resource, "closed", False):
            return True
        if exc is None:
            return False
        if isinstance(exc, BrokenConnectionError) or (
            self._broken_errors and isinstance(exc, self._broken_errors)
        ):
            return True
        return default_is_broken(resource, exc)
