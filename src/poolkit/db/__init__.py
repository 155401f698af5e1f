"""Database connection pools: SQLite, DuckDB, PostgreSQL (psycopg, asyncpg), MySQL/MariaDB.

Drivers are imported only when a pool needs them, so ``import poolkit.db`` works with
none installed; a missing driver raises ``ImportError`` naming the extra to install.

Example::

    from poolkit.db import DBPool

    with DBPool.from_url("sqlite:///app.db", max_size=4) as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (?)", (1,))
        print(db.fetchall("SELECT x FROM t"))
"""

from __future__ import annotations

from typing import Any

from ._common import BrokenConnectionError, ResetMode
from ._dbapi import AsyncDBFactory, DBAPIFactory, DBFactory
from ._pool import AsyncDBPool, DBPool, async_factory_from_url, factory_from_url
from ._url import DatabaseURL, parse_url, redact, scrub_exception

__all__ = [
    "AIOMySQLFactory",
    "AsyncDBFactory",
    "AsyncDBPool",
    "AsyncPsycopgFactory",
    "AsyncpgFactory",
    "BrokenConnectionError",
    "DBAPIFactory",
    "DBFactory",
    "DBPool",
    "DatabaseURL",
    "DuckDBFactory",
    "PsycopgFactory",
    "PyMySQLFactory",
    "ResetMode",
    "SQLiteFactory",
    "async_factory_from_url",
    "factory_from_url",
    "parse_url",
    "redact",
    "scrub_exception",
]

_LAZY = {
    "SQLiteFactory": "._embedded",
    "DuckDBFactory": "._embedded",
    "PsycopgFactory": "._postgres",
    "AsyncPsycopgFactory": "._postgres",
    "AsyncpgFactory": "._postgres",
    "PyMySQLFactory": "._mysql",
    "AIOMySQLFactory": "._mysql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit.db' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
