"""Fixtures for the poolkit.db tests: the machine's PostgreSQL/MariaDB URLs and helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_ASYNCPG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
CANARY = "Canary-Pw-7f3a9c"


@pytest.fixture
def pg_admin() -> Iterator[Any]:
    """An autocommit psycopg connection to the machine's PostgreSQL, for server-side checks."""
    import psycopg

    conn = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def mysql_admin() -> Iterator[Any]:
    """An autocommit PyMySQL connection to the machine's MariaDB."""
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1", port=3306, user="root", database="test", autocommit=True
    )
    try:
        yield conn
    finally:
        conn.close()
