"""``DBPool`` and ``AsyncDBPool``: database connection pools built on poolkit's core pools."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from .._types import Health, PoolStats
from ..async_pool import AsyncLease, AsyncPool
from ..pool import Lease, Pool
from ._dbapi import AsyncDBFactory, DBAPIFactory, DBFactory
from ._url import DatabaseURL, parse_url

__all__ = ["AsyncDBPool", "DBPool", "async_factory_from_url", "factory_from_url"]

_ADAPTER_OPTIONS = ("reset", "check_after_idle", "ping_timeout")
_UNSET: Any = object()


def _split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    adapter = {k: v for k, v in options.items() if k in _ADAPTER_OPTIONS}
    pool = {k: v for k, v in options.items() if k not in _ADAPTER_OPTIONS}
    return adapter, pool


def factory_from_url(
    url: str | DatabaseURL, connect_kwargs: Mapping[str, Any] | None = None, **adapter: Any
) -> DBFactory:
    """Build the thread-side factory for ``url``; ``adapter``: ``reset``, ``check_after_idle``...

    Example::

        factory_from_url("postgresql://postgres@127.0.0.1/test", reset="discard")
    """
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    extra = dict(connect_kwargs or {})
    driver = parsed.sync_driver
    if driver is None:
        raise ValueError(
            f"{parsed.scheme}:// is asyncio-only; "
            f"use poolkit.db.AsyncDBPool.from_url({str(parsed)!r})"
        )
    if driver == "sqlite3":
        from ._embedded import SQLiteFactory

        query: dict[str, Any] = dict(parsed.query)
        if "timeout" in query:
            query["timeout"] = float(query["timeout"])
        if "uri" in query:
            query["uri"] = query["uri"].lower() in ("1", "true", "yes", "on")
        return SQLiteFactory(parsed.database or ":memory:", **{**query, **extra}, **adapter)
    if driver == "duckdb":
        from ._embedded import DuckDBFactory

        read_only = str(parsed.query.get("read_only", "false")).lower() in ("1", "true", "yes")
        config = {k: v for k, v in parsed.query.items() if k != "read_only"}
        config.update(extra.pop("config", {}) or {})
        return DuckDBFactory(
            parsed.database or ":memory:", read_only=read_only, config=config, **extra, **adapter
        )
    if driver == "psycopg":
        from ._postgres import PsycopgFactory, pg_connect_kwargs

        return PsycopgFactory(**{**pg_connect_kwargs(parsed), **extra}, **adapter)
    if driver == "pymysql":
        from ._mysql import PyMySQLFactory, mysql_connect_kwargs

        return PyMySQLFactory(**{**mysql_connect_kwargs(parsed), **extra}, **adapter)
    raise ValueError(f"no thread-side driver for {parsed.scheme}://")  # pragma: no cover


def async_factory_from_url(
    url: str | DatabaseURL, connect_kwargs: Mapping[str, Any] | None = None, **adapter: Any
) -> AsyncDBFactory:
    """Build the asyncio factory for ``url``.

    Example::

        async_factory_from_url("postgresql+asyncpg://postgres@127.0.0.1/test")
    """
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    extra = dict(connect_kwargs or {})
    driver = parsed.async_driver
    if driver is None:
        raise ValueError(
            f"{parsed.scheme}:// has no asyncio driver; use poolkit.db.DBPool.from_url"
            f"({str(parsed)!r}) (an embedded database does no network I/O to await)"
        )
    if driver == "psycopg":
        from ._postgres import AsyncPsycopgFactory, pg_connect_kwargs

        return AsyncPsycopgFactory(**{**pg_connect_kwargs(parsed), **extra}, **adapter)
    if driver == "asyncpg":
        from ._postgres import AsyncpgFactory, pg_connect_kwargs

        kwargs = pg_connect_kwargs(parsed)
        if "dbname" in kwargs:
            kwargs["database"] = kwargs.pop("dbname")
        for key in ("connect_timeout", "statement_timeout", "ping_timeout"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return AsyncpgFactory(**{**kwargs, **extra}, **adapter)
    if driver == "aiomysql":
        from ._mysql import AIOMySQLFactory, mysql_connect_kwargs

        return AIOMySQLFactory(**{**mysql_connect_kwargs(parsed), **extra}, **adapter)
    raise ValueError(f"no asyncio driver for {parsed.scheme}://")  # pragma: no cover


def _run(conn: Any, sql: str, params: Any) -> Any:
    """A new cursor on ``conn`` that ran ``sql`` (closed again if that raised)."""
    cur = conn.cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
    except BaseException:
        cur.close()
        raise
    return cur


def _peek_window(peek_after_idle: float | None, factory: Any) -> float | None:
    """The core's ``check_after_idle``: when to run the factory's ``check`` on borrow."""
    ping: float | None = factory.ping_after_idle
    if peek_after_idle is None:
        return ping
    if peek_after_idle < 0:
        raise ValueError(f"peek_after_idle ({peek_after_idle}) must be >= 0 or None")
    return peek_after_idle if ping is None else min(peek_after_idle, ping)


class DBPool:
    """A thread-safe pool of database connections (sqlite3, DuckDB, psycopg, PyMySQL, any DB-API 2).

    Wraps a :class:`poolkit.Pool` (``db.pool``) built on a driver factory that knows how to
    check, reset and triage errors for its driver. Build it from a URL or from any DB-API 2
    ``connect`` function; pool options (``max_size``, ``acquire_timeout``, ``max_lifetime``...)
    are keyword arguments or URL query options.

    Adapter options: ``reset`` (``"rollback"`` default, ``"discard"``, ``"none"`` or a
    callable), ``check_after_idle`` (ping a connection idle this long; default 1 s for
    network databases), ``ping_timeout`` (bound on that ping), ``peek_after_idle``
    (peek at the socket, no round trip, when idle this long; default 0.05 s; 0 = every borrow).

    Example::

        from poolkit.db import DBPool

        with DBPool.from_url("postgresql://app:secret@127.0.0.1:5432/shop", max_size=10) as db:
            db.execute("INSERT INTO t (x) VALUES (%s)", (1,))
            rows = db.fetchall("SELECT x FROM t")
            with db.transaction() as conn:
                conn.execute("UPDATE t SET x = x + 1")
            with db.connection() as conn:      # the driver's own connection
                cur = conn.cursor()
    """

    def __init__(
        self,
        factory: DBFactory | None = None,
        *,
        connect: Callable[..., Any] | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        peek_after_idle: float | None = 0.05,
        **options: Any,
    ) -> None:
        adapter, pool_options = _split(options)
        if factory is None:
            if connect is None:
                raise TypeError(
                    "DBPool needs a factory, connect=<DB-API connect function> or from_url()"
                )
            factory = DBAPIFactory(connect, args, kwargs, **adapter)
        elif connect is not None:
            raise TypeError("pass either a factory or connect=, not both")
        elif adapter:
            raise TypeError(
                f"{', '.join(sorted(adapter))} belong to the factory when one is given; "
                f"pass them to {type(factory).__name__}(...)"
            )
        if not isinstance(factory, DBFactory):
            raise TypeError(f"factory must be a poolkit.db.DBFactory, not {type(factory).__name__}")
        self.factory = factory
        pool_options.setdefault("name", factory.label)
        pool_options.setdefault("check_after_idle", _peek_window(peek_after_idle, factory))
        self.pool: Pool[Any] = Pool(factory, **pool_options)
        self._closed_factory = False

    @classmethod
    def from_url(
        cls,
        url: str | DatabaseURL,
        *,
        connect_kwargs: Mapping[str, Any] | None = None,
        peek_after_idle: float | None = 0.05,
        **options: Any,
    ) -> DBPool:
        """Make a pool from a database URL; keyword options win over URL query options.

        Example::

            db = DBPool.from_url("sqlite:///app.db?max_size=4", acquire_timeout=5)
        """
        parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
        merged = {**parsed.pool_options, **options}
        adapter, pool_options = _split(merged)
        factory = factory_from_url(parsed, connect_kwargs, **adapter)
        return cls(factory, peek_after_idle=peek_after_idle, **pool_options)

    # -- borrowing -------------------------------------------------------------------------

    def connection(self, timeout: float | None = None, priority: int = 0) -> Lease[Any]:
        """Borrow a driver connection: ``with db.connection() as conn: ...``."""
        return self.pool.acquire(timeout, priority)

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Any]:
        """Borrow a connection for one transaction: commit on success, roll back on error."""
        with self.pool.acquire(timeout) as conn, self.factory.transaction(conn):
            yield conn

    def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement in its own transaction; return the affected row count."""
        with self.pool.acquire() as conn:
            cur = _run(conn, sql, params)
            try:
                count = cur.rowcount
            finally:
                cur.close()
            conn.commit()
            return int(count if count is not None else -1)

    def fetchall(self, sql: str, params: Any = None) -> list[Any]:
        """Run a query and return all its rows."""
        with self.pool.acquire() as conn:
            cur = _run(conn, sql, params)
            try:
                return list(cur.fetchall())
            finally:
                cur.close()

    def fetchone(self, sql: str, params: Any = None) -> Any:
        """Run a query and return its first row (or ``None``)."""
        with self.pool.acquire() as conn:
            cur = _run(conn, sql, params)
            try:
                return cur.fetchone()
            finally:
                cur.close()

    # -- lifecycle and inspection ------------------------------------------------------------

    @property
    def paramstyle(self) -> str:
        """The driver's placeholder style (``"qmark"``: ``?``, ``"format"``: ``%s``...)."""
        return str(self.factory.paramstyle)

    @property
    def name(self) -> str:
        """The pool's name (the URL without its password, unless given)."""
        return self.pool.name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return bool(self.pool.closed)

    def open(self, wait: bool = True) -> None:
        """Open the pool and warm it up to ``min_size`` (``wait=False``: in the background)."""
        self.pool.open(wait=wait)

    def close(self, timeout: float | None = 5.0) -> None:
        """Close the pool, then the factory (DuckDB: the database instance)."""
        self.pool.close(timeout)
        if not self._closed_factory:
            self._closed_factory = True
            self.factory.close()

    def stats(self) -> PoolStats:
        """The core pool's counters."""
        return self.pool.stats()

    def health(self) -> Health:
        """``ok`` / ``degraded`` / ``failing`` with reasons."""
        return self.pool.health()

    def __enter__(self) -> DBPool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.pool.stats()
        return (
            f"<poolkit.db.DBPool {self.name!r} size={s.size}/{s.max_size} idle={s.idle} "
            f"in_use={s.in_use} waiting={s.waiting}{' closed' if self.closed else ''}>"
        )


class AsyncDBPool:
    """An asyncio pool of database connections: psycopg 3, asyncpg or aiomysql.

    Wraps a :class:`poolkit.AsyncPool` (``db.pool``). URL schemes: ``postgresql://``
    (psycopg async), ``postgresql+asyncpg://``, ``mysql://`` (aiomysql). ``execute``,
    ``fetchall`` and ``fetchone`` use the driver's placeholders (``%s``, or ``$1`` for
    asyncpg) and return tuples. Options as for :class:`DBPool`.

    Example::

        from poolkit.db import AsyncDBPool

        async def main():
            async with AsyncDBPool.from_url("postgresql+asyncpg://postgres@127.0.0.1/test") as db:
                row = await db.fetchone("SELECT $1::int + 1", (41,))
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
                async with db.connection() as conn:
                    ...
    """

    def __init__(
        self,
        factory: AsyncDBFactory,
        *,
        peek_after_idle: float | None = 0.05,
        **pool_options: Any,
    ) -> None:
        if not isinstance(factory, AsyncDBFactory):
            raise TypeError(
                f"factory must be a poolkit.db.AsyncDBFactory, not {type(factory).__name__}"
            )
        adapter, pool_options = _split(pool_options)
        if adapter:
            raise TypeError(
                f"{', '.join(sorted(adapter))} belong to the factory; "
                f"pass them to {type(factory).__name__}(...)"
            )
        self.factory = factory
        pool_options.setdefault("name", factory.label)
        pool_options.setdefault("check_after_idle", _peek_window(peek_after_idle, factory))
        self.pool: AsyncPool[Any] = AsyncPool(factory, **pool_options)
        self._closed_factory = False

    @classmethod
    def from_url(
        cls,
        url: str | DatabaseURL,
        *,
        connect_kwargs: Mapping[str, Any] | None = None,
        peek_after_idle: float | None = 0.05,
        **options: Any,
    ) -> AsyncDBPool:
        """Make a pool from a database URL; keyword options win over URL query options.

        Example::

            db = AsyncDBPool.from_url("postgresql://postgres@127.0.0.1/test", max_size=20)
        """
        parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
        merged = {**parsed.pool_options, **options}
        adapter, pool_options = _split(merged)
        factory = async_factory_from_url(parsed, connect_kwargs, **adapter)
        return cls(factory, peek_after_idle=peek_after_idle, **pool_options)

    def connection(self, timeout: float | None = None, priority: int = 0) -> AsyncLease[Any]:
        """Borrow a driver connection: ``async with db.connection() as conn: ...``."""
        return self.pool.acquire(timeout, priority)

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """Borrow a connection for one transaction: commit on success, roll back on error."""
        async with self.pool.acquire(timeout) as conn, self.factory.transaction(conn):
            yield conn

    async def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement and commit; return the affected row count (-1 if unknown)."""
        factory = self.factory
        async with self.pool.acquire() as conn:
            count = await factory.execute(conn, sql, params)
            await factory.commit(conn)
            return count

    async def fetchall(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run a query and return all rows."""
        async with self.pool.acquire() as conn:
            return await self.factory.fetchall(conn, sql, params)

    async def fetchone(self, sql: str, params: Any = None) -> tuple[Any, ...] | None:
        """Run a query and return its first row (or ``None``)."""
        async with self.pool.acquire() as conn:
            return await self.factory.fetchone(conn, sql, params)

    @property
    def paramstyle(self) -> str:
        """The driver's placeholder style (``"numeric"`` = ``$1`` for asyncpg)."""
        return str(self.factory.paramstyle)

    @property
    def name(self) -> str:
        """The pool's name (the URL without its password, unless given)."""
        return self.pool.name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return bool(self.pool.closed)

    async def open(self, wait: bool = True) -> None:
        """Open the pool and warm it up to ``min_size``."""
        await self.pool.open(wait=wait)

    async def close(self, timeout: float | None = 5.0) -> None:
        """Close the pool, then the factory."""
        await self.pool.close(timeout)
        if not self._closed_factory:
            self._closed_factory = True
            await self.factory.close()

    def stats(self) -> PoolStats:
        """The core pool's counters."""
        return self.pool.stats()

    def health(self) -> Health:
        """``ok`` / ``degraded`` / ``failing`` with reasons."""
        return self.pool.health()

    async def __aenter__(self) -> AsyncDBPool:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        s = self.pool.stats()
        return (
            f"<poolkit.db.AsyncDBPool {self.name!r} size={s.size}/{s.max_size} idle={s.idle} "
            f"in_use={s.in_use} waiting={s.waiting}{' closed' if self.closed else ''}>"
        )
