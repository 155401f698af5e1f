"""Shared pieces of the database adapters: reset modes, socket peeks, lazy driver imports."""

from __future__ import annotations

import importlib
import select
import socket
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

__all__ = [
    "DEAD",
    "PENDING",
    "QUIET",
    "BrokenConnectionError",
    "ResetMode",
    "import_driver",
    "set_keepalive",
    "socket_state",
    "validate_reset",
]

#: ``reset=`` accepts one of these names, or a callable taking the connection.
ResetMode = Literal["rollback", "discard", "none"]

QUIET = 0  # nothing to read, no hang-up: the connection looks alive
PENDING = 1  # bytes are waiting (a notice, a notification, or a server's goodbye message)
DEAD = 2  # hang-up, error, or the file descriptor is gone

_POLL_FLAGS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
_DEAD_FLAGS = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


class BrokenConnectionError(Exception):
    """Raise it from a ``reset`` callable to have the pool destroy the connection.

    Example::

        def reset(conn):
            if conn.info.parameter_status("role") != "app":
                raise BrokenConnectionError("role changed; replace the connection")
    """


_EXTRAS = {
    "psycopg": "postgres",
    "asyncpg": "postgres",
    "pymysql": "mysql",
    "aiomysql": "mysql",
    "duckdb": "duckdb",
    "sqlalchemy": "sqlalchemy",
}


def import_driver(module: str) -> ModuleType:
    """Import a driver module, or raise ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", maxsplit=1)[0]
        extra = _EXTRAS.get(top)
        hint = f"pip install 'poolkit[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"poolkit.db needs the {top!r} driver for this URL: {hint}") from exc


def validate_reset(reset: object, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``reset`` is one of ``allowed`` or a callable."""
    if callable(reset):
        return
    if reset not in allowed:
        raise ValueError(
            f"reset={reset!r} is not supported here; expected one of "
            f"{', '.join(repr(a) for a in allowed)} or a callable taking the connection"
        )


def socket_state(fd: int | None) -> int:
    """Peek at a connection's socket without blocking or reading: QUIET, PENDING or DEAD.

    One ``poll()`` system call with a zero timeout (about a microsecond). ``POLLRDHUP``
    (Linux) reports a peer that closed its side even when its goodbye message is still
    unread, so a backend killed by ``pg_terminate_backend`` shows as DEAD.
    """
    if fd is None or fd < 0:
        return DEAD
    poller = select.poll()
    poller.register(fd, _POLL_FLAGS)
    try:
        events = poller.poll(0)
    except OSError:
        return DEAD
    if not events:
        return QUIET
    flags = events[0][1]
    if flags & _DEAD_FLAGS:
        return DEAD
    return PENDING


def set_keepalive(
    sock: socket.socket | Any,
    *,
    idle: int = 30,
    interval: int = 10,
    count: int = 3,
    user_timeout_ms: int | None = 30_000,
) -> None:
    """Turn on TCP keepalive (and ``TCP_USER_TIMEOUT`` on Linux) on a connected TCP socket.

    Unix sockets and platforms without the options are left alone.
    """
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        if user_timeout_ms and sys.platform.startswith("linux"):
            sock.setsockopt(
                socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18), user_timeout_ms
            )
    except (OSError, AttributeError):  # pragma: no cover - exotic sockets
        return


def call_reset(reset: object, conn: Any) -> Any:
    """Run a user reset callable (sync hook)."""
    fn: Callable[[Any], Any] = reset  # type: ignore[assignment]
    return fn(conn)
