"""Factories for embedded databases: ``sqlite3`` files and DuckDB (one instance, many cursors)."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .._types import ResourceInfo
from ._common import import_driver
from ._dbapi import DBFactory

__all__ = ["DuckDBFactory", "SQLiteFactory"]

_memory_ids = itertools.count(1)


class SQLiteFactory(DBFactory):
    """Pooled ``sqlite3`` connections to one database file.

    Connections are opened with ``check_same_thread=False`` (the pool hands each one to
    one thread at a time), a busy ``timeout`` and, if given, ``journal_mode`` (``"wal"``
    lets readers run while one writer writes). ``":memory:"`` becomes one shared in-memory
    database that lives as long as the factory, instead of a separate empty database per
    connection. Reset rolls back only when ``conn.in_transaction`` says a transaction is open.

    Example::

        from poolkit.db import DBPool
        db = DBPool.from_url("sqlite:///app.db?journal_mode=wal", max_size=4)
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    """

    backend = "sqlite"
    paramstyle = "qmark"

    def __init__(
        self,
        database: str,
        *,
        timeout: float = 5.0,
        journal_mode: str | None = None,
        isolation_level: Any = "",
        uri: bool = False,
        reset: object = "rollback",
        check_after_idle: float | None = None,
        ping_timeout: float = 5.0,
        **connect_kwargs: Any,
    ) -> None:
        if timeout < 0:
            raise ValueError(f"timeout ({timeout}) must be >= 0")
        self._anchor: sqlite3.Connection | None = None
        label = f"sqlite:///{database}"
        if database == ":memory:":
            database = f"file:poolkit-memory-{next(_memory_ids)}?mode=memory&cache=shared"
            uri = True
            self._anchor = sqlite3.connect(database, uri=True, check_same_thread=False)
        self.database = database
        self._timeout = timeout
        self._journal_mode = journal_mode
        self._isolation_level = isolation_level
        self._uri = uri
        self._connect_kwargs = connect_kwargs
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=(),
            label=label,
        )

    def create(self) -> sqlite3.Connection:
        """Open a connection and apply ``journal_mode``."""
        conn: sqlite3.Connection = sqlite3.connect(
            self.database,
            timeout=self._timeout,
            isolation_level=self._isolation_level,
            check_same_thread=False,
            uri=self._uri,
            **self._connect_kwargs,
        )
        if self._journal_mode:
            try:
                conn.execute(f"PRAGMA journal_mode={self._journal_mode}")
            except BaseException:
                conn.close()
                raise
        return conn

    def check(self, resource: sqlite3.Connection, info: ResourceInfo) -> bool:
        """An embedded connection has no network to lose; ``SELECT 1`` only after long idle."""
        if self.wants_ping(info):
            resource.execute("SELECT 1").fetchall()
        return True

    def reset(self, resource: sqlite3.Connection) -> None:
        """Roll back an open transaction; restore ``row_factory``; run a callable ``reset``."""
        mode = self.reset_mode
        if mode == "none":
            return
        if resource.in_transaction:
            resource.rollback()
        if resource.row_factory is not None:
            resource.row_factory = None
        if callable(mode):
            mode(resource)

    def is_broken(self, resource: sqlite3.Connection, exc: BaseException | None) -> bool:
        """A closed connection or a corrupt database file is broken; SQL errors are not."""
        if exc is None:
            return False
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return True
        if type(exc) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
            return True
        return super().is_broken(resource, exc)

    def close(self) -> None:
        """Close the anchor connection that keeps a shared in-memory database alive."""
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None


class DuckDBFactory(DBFactory):
    """Pooled DuckDB connections that all share one database instance.

    DuckDB allows one read-write process per file, so the factory opens the database
    once and pools *duplicate connections* of it (``db.cursor()``): each has its own
    transaction, and many threads read and write the one file safely. The instance
    is closed by :meth:`close`, which ``DBPool.close()`` calls after the pool closes.

    Example::

        from poolkit.db import DBPool
        with DBPool.from_url("duckdb:///analytics.duckdb", max_size=8) as db:
            db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER, name VARCHAR)")
            db.fetchall("SELECT count(*) FROM events")
    """

    backend = "duckdb"
    paramstyle = "qmark"

    def __init__(
        self,
        database: str = ":memory:",
        *,
        read_only: bool = False,
        config: Mapping[str, Any] | None = None,
        reset: object = "rollback",
        check_after_idle: float | None = None,
        ping_timeout: float = 5.0,
    ) -> None:
        self._duckdb = import_driver("duckdb")
        self.database = database
        self._read_only = read_only
        self._config = dict(config or {})
        self._instance: Any = None
        self._lock = threading.Lock()
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=(),
            label=f"duckdb:///{database}",
        )

    @property
    def instance(self) -> Any:
        """The one ``duckdb.DuckDBPyConnection`` that owns the database (opened on first use)."""
        with self._lock:
            if self._instance is None:
                self._instance = self._duckdb.connect(
                    self.database, read_only=self._read_only, config=self._config
                )
            return self._instance

    def create(self) -> Any:
        """A new connection to the shared instance (``instance.cursor()``)."""
        return self.instance.cursor()

    def check(self, resource: Any, info: ResourceInfo) -> bool:
        """In-process database: ``SELECT 1`` only after ``check_after_idle`` seconds idle."""
        if self.wants_ping(info):
            resource.execute("SELECT 1").fetchall()
        return True

    def reset(self, resource: Any) -> None:
        """Roll back an open transaction (DuckDB raises if none is open: that is cheap)."""
        mode = self.reset_mode
        if mode == "none":
            return
        with contextlib.suppress(self._duckdb.TransactionException):
            resource.rollback()
        if callable(mode):
            mode(resource)

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        """``BEGIN`` (DuckDB connections autocommit otherwise), then commit or roll back."""
        conn.begin()
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """A closed connection or an invalidated database (``FatalException``) is broken."""
        if exc is None:
            return False
        d = self._duckdb
        if isinstance(exc, (d.ConnectionException, d.FatalException)):
            return True
        return super().is_broken(resource, exc)

    def close(self) -> None:
        """Close the database instance (after the pool closed its connections)."""
        with self._lock:
            if self._instance is not None:
                self._instance.close()
                self._instance = None
