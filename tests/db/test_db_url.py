"""URL parsing, option splitting and password redaction (no server needed)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from poolkit.db import DBPool, parse_url, redact, scrub_exception
from poolkit.db._pool import async_factory_from_url, factory_from_url


def test_postgres_url_parts_and_pool_options() -> None:
    url = parse_url("postgresql://app:s%40cret@db.local:5433/shop?max_size=20&sslmode=require")
    assert (url.backend, url.sync_driver, url.async_driver) == ("postgresql", "psycopg", "psycopg")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "s@cret",
        "db.local",
        5433,
        "shop",
    )
    assert url.pool_options == {"max_size": 20}
    assert url.query == {"sslmode": "require"}
    assert "s@cret" not in str(url) and "s%40cret" not in repr(url)
    assert str(url) == "postgresql://app:***@db.local:5433/shop?sslmode=require"
    assert url.render(hide_password=False).startswith("postgresql://app:s%40cret@")


def test_schemes_pick_drivers() -> None:
    assert parse_url("postgresql+asyncpg://u@h/d").sync_driver is None
    assert parse_url("postgresql+asyncpg://u@h/d").async_driver == "asyncpg"
    assert parse_url("mariadb://root@h/d").sync_driver == "pymysql"
    assert parse_url("mysql://root@h/d").async_driver == "aiomysql"
    assert parse_url("duckdb:///x.duckdb").database == "x.duckdb"
    assert parse_url("sqlite:////abs/app.db").database == "/abs/app.db"
    assert parse_url("sqlite://").database == ":memory:"


def test_none_words_and_bad_values() -> None:
    opts = parse_url("sqlite:///a.db?max_lifetime=none&idle_timeout=5&reset=discard").pool_options
    assert opts == {"max_lifetime": None, "idle_timeout": 5.0, "reset": "discard"}
    with pytest.raises(ValueError, match=r"max_size='many' is not a valid integer"):
        parse_url("sqlite:///a.db?max_size=many")


def test_bad_scheme_and_missing_scheme_name_the_value_without_password() -> None:
    with pytest.raises(ValueError, match="unsupported database URL scheme 'oracle'"):
        parse_url("oracle://u:pw@h/d")
    with pytest.raises(ValueError, match="has no scheme") as info:
        parse_url("u:topsecret@host/db")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ValueError, match="invalid port") as info:
        parse_url("postgresql://u:topsecret@host:99999/db")
    assert "topsecret" not in str(info.value)


def test_redact_patterns() -> None:
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact("host=h password=hunter2 user=u") == "host=h password=*** user=u"
    assert redact("password='a b' x") == "password=*** x"
    assert redact("failed for hunter2", ["hunter2"]) == "failed for ***"


def test_scrub_exception_walks_the_chain() -> None:
    try:
        try:
            raise OSError("connect to u:hunter2@h failed")
        except OSError as inner:
            raise RuntimeError("wrapped hunter2") from inner
    except RuntimeError as exc:
        scrub_exception(exc, ["hunter2"])
        assert "hunter2" not in str(exc) and "hunter2" not in repr(exc.__cause__)


def test_asyncio_only_and_sync_only_schemes_say_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"asyncio-only; use poolkit\.db\.AsyncDBPool"):
        factory_from_url("postgresql+asyncpg://u:pw@h/d")
    with pytest.raises(ValueError, match="no asyncio driver") as info:
        async_factory_from_url("sqlite:///app.db")
    assert "DBPool.from_url" in str(info.value)


def test_adapter_options_with_a_factory_are_rejected() -> None:
    factory = factory_from_url("sqlite:///:memory:")
    with pytest.raises(TypeError, match="reset belong to the factory"):
        DBPool(factory, reset="discard")
    with pytest.raises(TypeError, match="factory, connect="):
        DBPool()
    with pytest.raises(ValueError, match=r"reset='discard' is not supported here"):
        DBPool(connect=sqlite3.connect, args=(":memory:",), reset="discard")
    factory.close()


def test_import_without_drivers_and_missing_driver_names_the_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('psycopg', 'asyncpg', 'pymysql', 'aiomysql', 'duckdb', 'sqlalchemy'):\n"
        "    sys.modules[name] = None\n"
        "import poolkit.db\n"
        "try:\n"
        "    poolkit.db.DBPool.from_url('postgresql://u:pw@127.0.0.1/db')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'poolkit[postgres]'" in out.stdout
