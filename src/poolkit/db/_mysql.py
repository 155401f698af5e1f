"""MySQL / MariaDB factories: PyMySQL (threads) and aiomysql (asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .._types import ResourceInfo, default_is_broken
from ..errors import PoolError
from ._common import DEAD, QUIET, BrokenConnectionError, import_driver, set_keepalive, socket_state
from ._dbapi import AsyncDBFactory, DBFactory
from ._url import DatabaseURL, secret_values

__all__ = ["AIOMySQLFactory", "PyMySQLFactory", "mysql_connect_kwargs"]

_IN_TRANS = 1  # SERVER_STATUS_IN_TRANS
_COM_RESET_CONNECTION = 0x1F  # MySQL 5.7.3+, MariaDB 10.2.4+

#: Error codes that mean the connection is gone (the client must reconnect).
DEAD_CODES = frozenset(
    {
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2003,  # CR_CONN_HOST_ERROR
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
        2014,  # CR_COMMANDS_OUT_OF_SYNC
        2055,  # CR_SERVER_LOST_EXTENDED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    }
)


def mysql_connect_kwargs(url: DatabaseURL) -> dict[str, Any]:
    """PyMySQL/aiomysql keyword arguments for a ``mysql://`` URL (password included)."""
    kwargs: dict[str, Any] = {}
    if url.host:
        kwargs["host"] = url.host
    if url.port is not None:
        kwargs["port"] = url.port
    if url.username is not None:
        kwargs["user"] = url.username
    if url.password is not None:
        kwargs["password"] = url.password
    if url.database:
        kwargs["database"] = url.database
    for key, value in url.query.items():
        kwargs[key] = int(value) if key.endswith("timeout") and value.isdigit() else value
    return kwargs


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class _MySQLCommon:
    backend = "mysql"
    paramstyle = "pyformat"
    reset_modes: tuple[str, ...] = ("rollback", "discard", "none")
    _kwargs: dict[str, Any]
    _autocommit: bool
    _driver: Any

    def _prepare(
        self, connect_kwargs: Mapping[str, Any], autocommit: bool
    ) -> tuple[str, list[str]]:
        kwargs = {"connect_timeout": 10, "charset": "utf8mb4", **connect_kwargs}
        kwargs["autocommit"] = autocommit
        self._kwargs = kwargs
        self._autocommit = autocommit
        secrets = secret_values(kwargs)
        user = kwargs.get("user", "")
        host = kwargs.get("host", "localhost")
        port = kwargs.get("port", 3306)
        db = kwargs.get("db") or kwargs.get("database") or ""
        label = f"mysql://{user}{'@' if user else ''}{host}:{port}/{db}"
        return label, secrets

    def _is_broken_exc(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False
        err = self._driver.err
        if isinstance(exc, (BrokenConnectionError, err.InterfaceError, asyncio.CancelledError)):
            return True
        if isinstance(exc, err.MySQLError) and _code(exc) in DEAD_CODES:
            return True
        return default_is_broken(None, exc)


class PyMySQLFactory(_MySQLCommon, DBFactory):
    """PyMySQL connections to MySQL or MariaDB for :class:`poolkit.db.DBPool`.

    *Reset on return*: ``"rollback"`` (default) rolls back only when the server's status
    flags (kept by PyMySQL from every reply) say a transaction is open, and restores
    autocommit; it leaves user variables, session variables, temp tables, prepared
    statements and named locks behind. ``"discard"`` sends ``COM_RESET_CONNECTION``
    (MySQL 5.7.3+, MariaDB 10.2.4+), which clears all of that, then restores the connect
    arguments' charset, ``sql_mode`` and ``init_command``, and autocommit; on a server
    without it the connection is destroyed and replaced instead.
    Dead-connection errors (2006, 2013, 2055, ...) destroy the connection; SQL errors do not.

    Example::

        factory = PyMySQLFactory(host="127.0.0.1", user="root", database="test")
        db = DBPool(factory, max_size=10)
    """

    def __init__(
        self,
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        autocommit: bool = False,
        keepalive: bool = True,
        **connect_kwargs: Any,
    ) -> None:
        self._driver = import_driver("pymysql")
        if "db" in connect_kwargs:
            connect_kwargs["database"] = connect_kwargs.pop("db")
        label, secrets = self._prepare(connect_kwargs, autocommit)
        self._keepalive = keepalive
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=label,
        )

    def create(self) -> Any:
        """Connect (errors scrubbed of the password), with TCP keepalive on."""
        try:
            conn = self._driver.connect(**self._kwargs)
        except BaseException as exc:
            self.scrub(exc)
            raise
        if self._keepalive and conn._sock is not None:
            set_keepalive(conn._sock)
        return conn

    def destroy(self, resource: Any) -> None:
        """Close the socket without a goodbye round trip."""
        if resource.open:
            resource._force_close()

    def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Closed flag, a socket peek, and ``COM_PING`` (bounded) only when needed."""
        sock = resource._sock
        if sock is None:
            return False
        state = socket_state(sock.fileno())
        if state == DEAD:
            return False
        if state == QUIET and not self.wants_ping(info):
            return True
        old = sock.gettimeout()
        sock.settimeout(self.ping_timeout)
        try:
            resource.ping(reconnect=False)
        except (self._driver.err.MySQLError, OSError):
            return False
        finally:
            if resource._sock is not None:
                resource._sock.settimeout(old)
        return True

    def reset(self, resource: Any) -> None:
        """Rollback when the status flags say so; ``COM_RESET_CONNECTION`` in discard mode."""
        mode = self.reset_mode
        if mode == "none":
            return
        if resource.server_status & _IN_TRANS:
            resource.rollback()
        if mode == "discard":
            send = getattr(resource, "_execute_command", None)
            read_ok = getattr(resource, "_read_ok_packet", None)
            if send is None or read_ok is None:
                raise BrokenConnectionError("this PyMySQL cannot reset a connection; replacing it")
            send(_COM_RESET_CONNECTION, b"")
            read_ok()
            resource.set_character_set(resource.charset, getattr(resource, "collation", None))
            if resource.sql_mode is not None:
                resource.query(f"SET sql_mode={resource.escape(resource.sql_mode)}")
            if resource.init_command is not None:
                resource.query(resource.init_command)
                resource.commit()
        elif callable(mode):
            mode(resource)
            if resource.server_status & _IN_TRANS:
                resource.rollback()
        if resource.get_autocommit() != self._autocommit:
            resource.autocommit(self._autocommit)

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Closed, or a dead-connection error code; SQL errors keep the connection."""
        if resource._sock is None:
            return True
        if exc is None:
            return False
        return self._is_broken_exc(exc)


class AIOMySQLFactory(_MySQLCommon, AsyncDBFactory):
    """aiomysql connections to MySQL or MariaDB for :class:`poolkit.db.AsyncDBPool`.

    Same reset modes and error triage as :class:`PyMySQLFactory`. A task cancelled
    in the middle of a query leaves the protocol out of step, so the connection is
    destroyed rather than reused.

    Example::

        factory = AIOMySQLFactory(host="127.0.0.1", user="root", db="test")
        db = AsyncDBPool(factory, max_size=10)
    """

    def __init__(
        self,
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        autocommit: bool = False,
        keepalive: bool = True,
        **connect_kwargs: Any,
    ) -> None:
        self._aiomysql = import_driver("aiomysql")
        self._driver = import_driver("pymysql")
        if "database" in connect_kwargs:
            connect_kwargs["db"] = connect_kwargs.pop("database")
        label, secrets = self._prepare(connect_kwargs, autocommit)
        self._keepalive = keepalive
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=label,
        )

    @staticmethod
    def _socket(conn: Any) -> Any:
        writer = getattr(conn, "_writer", None)
        return None if writer is None else writer.transport.get_extra_info("socket")

    async def create(self) -> Any:
        """Connect (errors scrubbed of the password), with TCP keepalive on."""
        try:
            conn = await self._aiomysql.connect(**self._kwargs)
        except BaseException as exc:
            self.scrub(exc)
            raise
        sock = self._socket(conn)
        if self._keepalive and sock is not None:
            set_keepalive(sock)
        return conn

    async def destroy(self, resource: Any) -> None:
        """Close the transport (no goodbye round trip that could hang)."""
        resource.close()

    async def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Closed flag, a socket peek, and a bounded ``COM_PING`` only when needed."""
        sock = self._socket(resource)
        if resource.closed or sock is None:
            return False
        state = socket_state(sock.fileno())
        if state == DEAD:
            return False
        if state == QUIET and not self.wants_ping(info):
            return True
        try:
            await asyncio.wait_for(resource.ping(reconnect=False), self.ping_timeout)
        except (self._driver.err.MySQLError, OSError, asyncio.TimeoutError):
            return False
        except BaseException:
            resource.close()  # cancelled mid-ping: the protocol state is unknown
            raise
        return True

    async def reset(self, resource: Any) -> None:
        """Rollback when the status flags say so; ``COM_RESET_CONNECTION`` in discard mode."""
        mode = self.reset_mode
        if mode == "none":
            return
        if resource.server_status & _IN_TRANS:
            await resource.rollback()
        if mode == "discard":
            await resource._execute_command(_COM_RESET_CONNECTION, b"")
            await resource._read_ok_packet()
            await resource.set_charset(resource.charset)
            if resource.sql_mode is not None:
                await resource.query(f"SET sql_mode={resource.escape(resource.sql_mode)}")
            if resource.init_command is not None:
                await resource.query(resource.init_command)
                await resource.commit()
        elif callable(mode):
            result = mode(resource)
            if asyncio.iscoroutine(result):
                await result
            if resource.server_status & _IN_TRANS:
                await resource.rollback()
        if resource.get_autocommit() != self._autocommit:
            await resource.autocommit(self._autocommit)

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Closed, cancelled mid-query, or a dead-connection error code."""
        if resource.closed:
            return True
        if exc is None:
            return False
        return self._is_broken_exc(exc)

    async def execute(self, conn: Any, sql: str, params: Any) -> int:
        """Run a statement; return its row count."""
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return int(cur.rowcount)

    async def fetchall(self, conn: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a query and return all rows."""
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    async def fetchone(self, conn: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
        """Run a query and return the first row."""
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
            return None if row is None else tuple(row)
