"""PostgreSQL factories: psycopg 3 (threads and asyncio) and asyncpg (asyncio)."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

from .._types import ResourceInfo, default_is_broken
from ..errors import PoolError
from ._common import DEAD, QUIET, BrokenConnectionError, import_driver, set_keepalive, socket_state
from ._dbapi import AsyncDBFactory, DBFactory
from ._url import DatabaseURL, secret_values

__all__ = ["AsyncPsycopgFactory", "AsyncpgFactory", "PsycopgFactory", "pg_connect_kwargs"]

# libpq transaction status values (psycopg.pq.TransactionStatus)
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = 0, 1, 2, 3, 4
_WAIT_R, _WAIT_W = 1, 2

#: libpq options poolkit sets unless the caller gives them: a bounded connect, TCP
#: keepalive after 30 s idle (3 probes 10 s apart) and a 30 s ``tcp_user_timeout`` so a
#: query whose packets are never acknowledged fails instead of hanging.
PG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

#: the PG_DEFAULTS that only mean something on TCP (dropped for a Unix-socket host)
_TCP_OPTIONS = tuple(key for key in PG_DEFAULTS if key != "connect_timeout")
_DISCARD = "DISCARD ALL"


def pg_connect_kwargs(url: DatabaseURL) -> dict[str, Any]:
    """libpq keyword arguments for a ``postgresql://`` URL (password included)."""
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
        kwargs["dbname"] = url.database
    kwargs.update(url.query)
    return kwargs


def _label(scheme: str, kwargs: Mapping[str, Any], dbname_key: str) -> str:
    """``scheme://user@host:port/db`` from connect arguments (never the password)."""
    user = kwargs.get("user", "")
    host = kwargs.get("host", "")
    port = kwargs.get("port", "")
    db = kwargs.get(dbname_key, "")
    return f"{scheme}://{user}{'@' if user else ''}{host}{':' if port else ''}{port}/{db}"


def _statement_timeout_option(kwargs: dict[str, Any], statement_timeout: float | None) -> None:
    if statement_timeout is None:
        return
    if statement_timeout < 0:
        raise ValueError(f"statement_timeout ({statement_timeout}) must be >= 0 or None")
    opt = f"-c statement_timeout={int(statement_timeout * 1000)}"
    kwargs["options"] = f"{kwargs['options']} {opt}" if kwargs.get("options") else opt


def _ping_steps(pgconn: Any) -> Generator[int, None, bool]:
    """Send an empty query and read its result at libpq level; yields what to wait for."""
    pgconn.send_query(b"")
    while pgconn.flush():
        yield _WAIT_W
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        yield _WAIT_R
    ok = True
    while True:
        res = pgconn.get_result()
        if res is None:
            break
        # EMPTY_QUERY = 0, COMMAND_OK = 1, TUPLES_OK = 2
        ok = ok and res.status in (0, 1, 2)
    return ok and pgconn.transaction_status == _IDLE


def _ping_sync(pgconn: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    fd = pgconn.socket
    steps = _ping_steps(pgconn)
    try:
        wait = next(steps)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if wait == _WAIT_R:
                ready = select.select([fd], [], [], remaining)[0]
            else:
                ready = select.select([], [fd], [], remaining)[1]
            if not ready:
                return False
            wait = steps.send(None)
    except StopIteration as stop:
        return bool(stop.value)


async def _ping_async(pgconn: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    steps = _ping_steps(pgconn)

    async def run() -> bool:
        try:
            wait = next(steps)
            while True:
                fut: asyncio.Future[None] = loop.create_future()

                def ready(fut: asyncio.Future[None] = fut) -> None:
                    if not fut.done():
                        fut.set_result(None)

                if wait == _WAIT_R:
                    loop.add_reader(fd, ready)
                    try:
                        await fut
                    finally:
                        loop.remove_reader(fd)
                else:
                    loop.add_writer(fd, ready)
                    try:
                        await fut
                    finally:
                        loop.remove_writer(fd)
                wait = steps.send(None)
        except StopIteration as stop:
            return bool(stop.value)

    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        return False


class _PsycopgCommon:
    """What the sync and async psycopg factories share (no I/O)."""

    backend = "postgresql"
    paramstyle = "format"
    reset_modes: tuple[str, ...] = ("rollback", "discard", "none")
    _psycopg: Any
    _kwargs: dict[str, Any]
    _autocommit: bool
    _row_factory: Any
    _broken_types: tuple[type[BaseException], ...]

    def _prepare(
        self,
        conninfo: str | Mapping[str, Any],
        autocommit: bool,
        row_factory: Any,
        statement_timeout: float | None,
        connect_kwargs: Mapping[str, Any],
    ) -> tuple[str, list[str]]:
        psycopg = self._psycopg = import_driver("psycopg")
        if isinstance(conninfo, str):
            parsed = dict(psycopg.conninfo.conninfo_to_dict(conninfo)) if conninfo else {}
        else:
            parsed = dict(conninfo)
        parsed.update(connect_kwargs)
        kwargs = {**PG_DEFAULTS, **parsed}
        if kwargs.get("host", "").startswith("/"):  # a Unix socket: no TCP options
            for key in _TCP_OPTIONS:
                kwargs.pop(key, None)
        _statement_timeout_option(kwargs, statement_timeout)
        self._kwargs = kwargs
        self._autocommit = bool(autocommit)
        self._row_factory = row_factory if row_factory is not None else psycopg.rows.tuple_row
        errors = psycopg.errors
        self._broken_types = (
            errors.AdminShutdown,
            errors.CrashShutdown,
            errors.CannotConnectNow,
            errors.IdleSessionTimeout,
            errors.IdleInTransactionSessionTimeout,
            errors.ConnectionException,
            psycopg.InterfaceError,
        )
        return _label("postgresql", kwargs, "dbname"), secret_values(kwargs)

    def _is_broken(self, conn: Any, exc: BaseException | None) -> bool:
        pgconn = conn.pgconn
        if pgconn.status != 0:  # CONNECTION_OK = 0; BAD = closed or lost
            return True
        if pgconn.transaction_status in (_ACTIVE, _UNKNOWN):  # a query still in flight
            return True
        if exc is None:
            return False
        if isinstance(exc, (BrokenConnectionError, *self._broken_types)):
            return True
        return default_is_broken(conn, exc)

    def _fix_attributes(self, conn: Any) -> None:
        """Undo client-side settings a borrower changed (no round trip)."""
        try:  # fast path: psycopg's own fields, one comparison
            if (
                conn._autocommit is self._autocommit
                and conn._isolation_level is None
                and conn._read_only is None
                and conn._deferrable is None
                and conn.row_factory is self._row_factory
            ):
                return
        except AttributeError:  # pragma: no cover - another psycopg layout
            pass
        if conn.autocommit != self._autocommit:
            conn.autocommit = self._autocommit
        if conn.isolation_level is not None:
            conn.isolation_level = None
        if conn.read_only is not None:
            conn.read_only = None
        if conn.deferrable is not None:
            conn.deferrable = None
        if conn.row_factory is not self._row_factory:
            conn.row_factory = self._row_factory


class PsycopgFactory(_PsycopgCommon, DBFactory):
    """psycopg 3 connections for :class:`poolkit.db.DBPool` (threads).

    *Reset on return* (``reset=``):

    - ``"rollback"`` (default): roll back if libpq reports a transaction open or failed
      (no round trip when idle), and restore ``autocommit``, ``isolation_level``,
      ``read_only``, ``deferrable`` and ``row_factory``. Leaves behind session state a
      borrower set *outside* a transaction or committed: ``SET``/``SET ROLE``, temp
      tables, ``PREPARE``d statements, session advisory locks, ``LISTEN``.
    - ``"discard"``: the above, then ``DISCARD ALL`` in autocommit (one round trip):
      nothing of the previous borrower survives.
    - a callable ``reset(conn)`` run after the rollback; ``"none"`` does nothing.

    Liveness: every borrow peeks at the socket (one ``poll()``, no round trip); a
    connection idle for ``check_after_idle`` seconds, or with unread bytes, is pinged
    with an empty query bounded by ``ping_timeout``. libpq gets ``connect_timeout=10``,
    TCP keepalive and ``tcp_user_timeout=30000`` unless you pass your own. They end a
    query on a dead network path (data unacknowledged for 30 s; or, for a query already
    sent, keepalive probes after 30 s idle), not one behind a live middlebox that keeps
    acknowledging but forwards nothing: psycopg's sync API has no client-side query
    timeout, so such a query waits until the peer closes the connection.

    ``configure(conn)`` runs once on each new connection and what it does is committed;
    ``"discard"`` undoes its session settings (``SET ...``) at the first return.

    Example::

        factory = PsycopgFactory("host=127.0.0.1 dbname=test user=postgres", reset="discard")
        db = DBPool(factory, max_size=10)
    """

    def __init__(
        self,
        conninfo: str | Mapping[str, Any] = "",
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        autocommit: bool = False,
        row_factory: Any = None,
        statement_timeout: float | None = None,
        configure: Callable[[Any], None] | None = None,
        **connect_kwargs: Any,
    ) -> None:
        label, secrets = self._prepare(
            conninfo, autocommit, row_factory, statement_timeout, connect_kwargs
        )
        self._configure = configure
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=label,
        )

    def create(self) -> Any:
        """Connect (errors are scrubbed of the password)."""
        psycopg = self._psycopg
        try:
            conn = psycopg.Connection.connect(
                autocommit=self._autocommit, row_factory=self._row_factory, **self._kwargs
            )
        except BaseException as exc:
            self.scrub(exc)
            raise
        if self._configure is not None:
            try:
                self._configure(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    conn.commit()  # keep what configure() set up
            except BaseException:
                conn.close()
                raise
        return conn

    def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Status flags, then a socket peek; an empty-query ping only when needed."""
        pgconn = resource.pgconn
        if pgconn.status != 0 or pgconn.transaction_status != _IDLE:
            return False
        state = socket_state(pgconn.socket)
        if state == DEAD:
            return False
        if state == QUIET and not self.wants_ping(info):
            return True
        try:
            return _ping_sync(pgconn, self.ping_timeout)
        except self._psycopg.Error:
            return False

    def reset(self, resource: Any) -> None:
        """Roll back if needed, restore attributes, then the ``reset`` mode's extra step."""
        mode = self.reset_mode
        if mode == "none":
            return
        status = resource.pgconn.transaction_status
        if status != _IDLE:
            if status in (_INTRANS, _INERROR):
                resource.rollback()
            else:
                raise BrokenConnectionError(f"connection returned in transaction state {status}")
        self._fix_attributes(resource)
        if mode == "discard":
            if resource.autocommit:
                resource.execute(_DISCARD)
            else:
                resource.autocommit = True
                try:
                    resource.execute(_DISCARD)
                finally:
                    resource.autocommit = False
        elif callable(mode):
            mode(resource)
            if resource.pgconn.transaction_status != _IDLE:
                resource.rollback()

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Lost/closed connection, a query still running, or a connection-class error."""
        return self._is_broken(resource, exc)

    def transaction(self, conn: Any) -> Any:
        """psycopg's own ``conn.transaction()``: a real transaction even in autocommit mode."""
        return conn.transaction()


class AsyncPsycopgFactory(_PsycopgCommon, AsyncDBFactory):
    """psycopg 3 ``AsyncConnection`` factory for :class:`poolkit.db.AsyncDBPool`.

    Same reset modes, liveness and defaults as :class:`PsycopgFactory`.

    Example::

        factory = AsyncPsycopgFactory("host=127.0.0.1 dbname=test user=postgres")
        db = AsyncDBPool(factory, max_size=10)
    """

    def __init__(
        self,
        conninfo: str | Mapping[str, Any] = "",
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        autocommit: bool = False,
        row_factory: Any = None,
        statement_timeout: float | None = None,
        **connect_kwargs: Any,
    ) -> None:
        label, secrets = self._prepare(
            conninfo, autocommit, row_factory, statement_timeout, connect_kwargs
        )
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=label,
        )

    async def create(self) -> Any:
        """Connect (errors are scrubbed of the password)."""
        try:
            conn = await self._psycopg.AsyncConnection.connect(
                autocommit=self._autocommit, row_factory=self._row_factory, **self._kwargs
            )
        except BaseException as exc:
            self.scrub(exc)
            raise
        return conn

    async def destroy(self, resource: Any) -> None:
        """Close the connection (sends Terminate without waiting for the server)."""
        await resource.close()

    async def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Status flags, then a socket peek; an empty-query ping only when needed."""
        pgconn = resource.pgconn
        if pgconn.status != 0 or pgconn.transaction_status != _IDLE:
            return False
        state = socket_state(pgconn.socket)
        if state == DEAD:
            return False
        if state == QUIET and not self.wants_ping(info):
            return True
        try:
            return await _ping_async(pgconn, self.ping_timeout)
        except self._psycopg.Error:
            return False
        except BaseException:
            pgconn.finish()  # cancelled mid-ping: a query is in flight; never reuse it
            raise

    async def reset(self, resource: Any) -> None:
        """Roll back if needed, restore attributes, then the ``reset`` mode's extra step."""
        mode = self.reset_mode
        if mode == "none":
            return
        status = resource.pgconn.transaction_status
        if status != _IDLE:
            if status in (_INTRANS, _INERROR):
                await resource.rollback()
            else:
                raise BrokenConnectionError(f"connection returned in transaction state {status}")
        if resource.autocommit != self._autocommit:
            await resource.set_autocommit(self._autocommit)
        if resource.isolation_level is not None:
            await resource.set_isolation_level(None)
        if resource.read_only is not None:
            await resource.set_read_only(None)
        if resource.deferrable is not None:
            await resource.set_deferrable(None)
        if resource.row_factory is not self._row_factory:
            resource.row_factory = self._row_factory
        if mode == "discard":
            if resource.autocommit:
                await resource.execute(_DISCARD)
            else:
                await resource.set_autocommit(True)
                try:
                    await resource.execute(_DISCARD)
                finally:
                    await resource.set_autocommit(False)
        elif callable(mode):
            result = mode(resource)
            if asyncio.iscoroutine(result):
                await result
            if resource.pgconn.transaction_status != _IDLE:
                await resource.rollback()

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Lost/closed connection, a query still running, or a connection-class error."""
        return self._is_broken(resource, exc)

    def transaction(self, conn: Any) -> Any:
        """psycopg's own ``conn.transaction()``: a real transaction even in autocommit mode."""
        return conn.transaction()

    async def execute(self, conn: Any, sql: str, params: Any) -> int:
        """Run a statement; return its row count."""
        cur = await conn.execute(sql, params)
        return int(cur.rowcount)

    async def fetchall(self, conn: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a query and return all rows."""
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())

    async def fetchone(self, conn: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
        """Run a query and return the first row."""
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        return None if row is None else tuple(row)


def _asyncpg_socket_fd(conn: Any) -> int | None:
    transport = getattr(conn, "_transport", None)
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


class AsyncpgFactory(AsyncDBFactory):
    """asyncpg connections for :class:`poolkit.db.AsyncDBPool` (``postgresql+asyncpg://``).

    *Reset on return* (``reset=``):

    - ``"rollback"`` (default): if a transaction is open, roll it back; if the borrower
      added ``LISTEN``/log listeners, run asyncpg's own ``reset()``. Otherwise nothing:
      no round trip. asyncpg's pool instead sends ``SELECT pg_advisory_unlock_all();
      CLOSE ALL; UNLISTEN *; RESET ALL`` on *every* release (one round trip), which
      still leaves ``SET ROLE``, temp tables and SQL ``PREPARE``\\ d statements behind.
      So "rollback" is as safe as asyncpg's pool about transactions and callbacks,
      cheaper, and — like it — trusts code not to leave session state.
    - ``"discard"``: the above, then ``DISCARD ALL`` (and asyncpg's statement cache is
      cleared, since ``DISCARD ALL`` deallocates its prepared statements): nothing
      survives. Use it when borrowers run ``SET``, ``SET ROLE`` or temp tables.
    - a callable ``reset(conn)`` (may be async); ``"none"`` does nothing.

    Example::

        factory = AsyncpgFactory(host="127.0.0.1", user="postgres", database="test")
        db = AsyncDBPool(factory, max_size=10)
    """

    backend = "postgresql"
    paramstyle = "numeric"
    reset_modes: tuple[str, ...] = ("rollback", "discard", "none")

    def __init__(
        self,
        dsn: str | None = None,
        *,
        reset: object = "rollback",
        check_after_idle: float | None = 1.0,
        ping_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        keepalive: bool = True,
        **connect_kwargs: Any,
    ) -> None:
        self._asyncpg = import_driver("asyncpg")
        kwargs = dict(connect_kwargs)
        kwargs.setdefault("timeout", connect_timeout)
        if statement_timeout is not None:
            if statement_timeout < 0:
                raise ValueError(f"statement_timeout ({statement_timeout}) must be >= 0 or None")
            settings = dict(kwargs.get("server_settings") or {})
            settings["statement_timeout"] = str(int(statement_timeout * 1000))
            kwargs["server_settings"] = settings
        self._dsn = dsn
        self._kwargs = kwargs
        self._keepalive = keepalive
        exc = self._asyncpg.exceptions
        self._broken_types: tuple[type[BaseException], ...] = (
            exc.PostgresConnectionError,
            exc.AdminShutdownError,
            exc.CrashShutdownError,
            exc.CannotConnectNowError,
            exc.InterfaceError,
            exc.InternalClientError,
            exc.ProtocolViolationError,
            asyncio.CancelledError,
            asyncio.TimeoutError,
        )
        secrets = secret_values(kwargs)
        if dsn:
            from ._url import parse_url

            try:
                parsed = parse_url(dsn)
                secrets += list(parsed.secrets())
                label = parsed.render()
            except ValueError:
                label = "postgresql+asyncpg://?"
        else:
            label = _label("postgresql+asyncpg", kwargs, "database")
        self._setup(
            reset=reset,
            check_after_idle=check_after_idle,
            ping_timeout=ping_timeout,
            secrets=secrets,
            label=label,
        )

    async def create(self) -> Any:
        """Connect (errors are scrubbed of the password) and turn on TCP keepalive."""
        try:
            conn = await self._asyncpg.connect(self._dsn, **self._kwargs)
        except BaseException as exc:
            self.scrub(exc)
            raise
        if self._keepalive:
            transport = getattr(conn, "_transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                set_keepalive(sock)
        return conn

    async def destroy(self, resource: Any) -> None:
        """Close politely within ``ping_timeout``; otherwise abort the socket."""
        if resource.is_closed():
            return
        try:
            await resource.close(timeout=self.ping_timeout)
        except Exception:
            resource.terminate()  # the server did not answer in time: drop the socket
        except BaseException:
            resource.terminate()
            raise

    async def check(self, resource: Any, info: ResourceInfo) -> bool:
        """Closed flag, a socket peek, and an empty query only when needed."""
        if resource.is_closed() or resource.is_in_transaction():
            return False
        state = socket_state(_asyncpg_socket_fd(resource))
        if state == DEAD:
            return False
        if state == QUIET and not self.wants_ping(info):
            return True
        try:
            await resource.execute("SELECT 1", timeout=self.ping_timeout)
        except (self._asyncpg.PostgresError, self._asyncpg.InterfaceError, OSError):
            return False
        except asyncio.TimeoutError:
            return False
        except BaseException:
            resource.terminate()  # cancelled mid-ping: the protocol state is unknown
            raise
        return True

    async def reset(self, resource: Any) -> None:
        """Rollback/listener cleanup only when needed; ``DISCARD ALL`` in discard mode."""
        mode = self.reset_mode
        if mode == "none":
            return
        if (
            resource.is_in_transaction()
            or getattr(resource, "_top_xact", None) is not None
            or getattr(resource, "_listeners", None)
            or getattr(resource, "_log_listeners", None)
        ):
            await resource.reset(timeout=self.ping_timeout)
        if mode == "discard":
            await resource.execute(_DISCARD, timeout=self.ping_timeout)
            drop = getattr(resource, "_drop_local_statement_cache", None)
            if drop is not None:
                drop()
        elif callable(mode):
            result = mode(resource)
            if asyncio.iscoroutine(result):
                await result

    def is_broken(self, resource: Any, exc: BaseException | None) -> bool:
        """Closed, cancelled mid-operation, or a connection-class error: destroy it."""
        if resource.is_closed():
            return True
        if exc is None:
            return False
        if isinstance(exc, PoolError):
            return False
        if isinstance(exc, (BrokenConnectionError, *self._broken_types)):
            return True
        return default_is_broken(resource, exc)

    async def execute(self, conn: Any, sql: str, params: Any) -> int:
        """Run a statement (``$1`` placeholders); return the row count from its status."""
        status = await conn.execute(sql, *(params or ()))
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    async def fetchall(self, conn: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a query and return all rows as tuples."""
        return [tuple(r) for r in await conn.fetch(sql, *(params or ()))]

    async def fetchone(self, conn: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
        """Run a query and return the first row as a tuple."""
        row = await conn.fetchrow(sql, *(params or ()))
        return None if row is None else tuple(row)

    def transaction(self, conn: Any) -> Any:
        """asyncpg's own ``conn.transaction()``."""
        return conn.transaction()

    async def commit(self, conn: Any) -> None:
        """asyncpg runs each statement in its own transaction: nothing to commit."""
