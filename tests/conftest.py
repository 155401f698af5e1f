"""Shared fixtures: private servers (PostgreSQL, Redis, nginx) and a TCP fault proxy.

Each fixture skips its test with a clear reason when the server's binary is missing, starts a
fresh private instance on a free loopback port and removes it afterwards. See
``tests/servers.py`` for the classes.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (
    PrivateNginx,
    PrivatePostgres,
    PrivateRedis,
    TcpProxy,
    missing_binary,
)


@pytest.fixture(scope="session")
def postgres_binaries() -> None:
    """Skip unless initdb and postgres are installed."""
    reason = missing_binary("initdb", "postgres")
    if reason:
        pytest.skip(f"private PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def redis_binary() -> None:
    """Skip unless redis-server is installed."""
    reason = missing_binary("redis-server")
    if reason:
        pytest.skip(f"private Redis unavailable: {reason}")


@pytest.fixture(scope="session")
def nginx_binary() -> None:
    """Skip unless nginx is installed (scripts/test installs it with apt-get)."""
    reason = missing_binary("nginx")
    if reason and not Path("/usr/sbin/nginx").exists():
        pytest.skip(f"private nginx unavailable: {reason}; run scripts/test to install it")


@pytest.fixture
def private_postgres(postgres_binaries: None) -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL (``.dsn``, ``.port``, ``.kill()``, ``.start()``...)."""
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture
def private_redis(redis_binary: None) -> Iterator[PrivateRedis]:
    """A running private redis-server (``.url``, ``.port``, ``.kill()``, ``.start()``...)."""
    with PrivateRedis() as rs:
        yield rs


@pytest.fixture
def private_nginx(nginx_binary: None) -> Iterator[PrivateNginx]:
    """A running private nginx with default keep-alive settings (``.url(path)``...).

    For other keep-alive settings build one: ``PrivateNginx(keepalive_timeout=1)`` or call
    ``private_nginx.reload(keepalive_requests=2)``.
    """
    with PrivateNginx() as web:
        yield web


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[..., TcpProxy]]:
    """Factory: ``proxy = tcp_proxy(("127.0.0.1", port), mode="pass")``; all closed after."""
    made: list[TcpProxy] = []

    def make(target: tuple[str, int], **kwargs: Any) -> TcpProxy:
        proxy = TcpProxy(target, **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


# ---------------------------------------------------------------- the machine's services

_SERVICE_PORTS = {"postgres": 5432, "mysql": 3306, "redis": 6379}
_SERVICE_STATE: dict[str, bool] = {}


def _service_answers(marker: str) -> bool:
    if marker not in _SERVICE_STATE:
        try:
            socket.create_connection(("127.0.0.1", _SERVICE_PORTS[marker]), timeout=2).close()
        except OSError:
            _SERVICE_STATE[marker] = False
        else:
            _SERVICE_STATE[marker] = True
    return _SERVICE_STATE[marker]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked postgres/mysql/redis when that service does not answer.

    scripts/test sets POOLKIT_REQUIRE_SERVICES=1 after it has verified every service: then a
    dead service fails the test instead of hiding it behind a skip.
    """
    for name, port in _SERVICE_PORTS.items():
        if item.get_closest_marker(name) is None or _service_answers(name):
            continue
        reason = f"the machine's {name} service does not answer on 127.0.0.1:{port}"
        if os.environ.get("POOLKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (scripts/test verified it earlier: it went down)")
        pytest.skip(reason + "; start it (scripts/test does)")
