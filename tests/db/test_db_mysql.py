"""DBPool / AsyncDBPool against the machine's MariaDB: reset modes and error triage."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from poolkit.db import AsyncDBPool, DBPool

from .conftest import MYSQL_URL

pytestmark = pytest.mark.mysql

pymysql = pytest.importorskip("pymysql")


def _q(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_basics_and_transactions() -> None:
    with DBPool.from_url(MYSQL_URL, max_size=2) as db:
        db.execute("CREATE TABLE IF NOT EXISTS poolkit_db_t (x INT)")
        db.execute("DELETE FROM poolkit_db_t")
        db.execute("INSERT INTO poolkit_db_t VALUES (%s)", (1,))
        with pytest.raises(ZeroDivisionError), db.transaction() as conn:
            _q(conn, "INSERT INTO poolkit_db_t VALUES (2)")
            raise ZeroDivisionError
        with db.connection() as conn:
            _q(conn, "INSERT INTO poolkit_db_t VALUES (3)")  # never committed: rolled back
            assert conn.server_status & 1
        assert db.fetchall("SELECT x FROM poolkit_db_t") == [(1,)]
        db.execute("DROP TABLE poolkit_db_t")


@pytest.mark.parametrize("mode", ["rollback", "discard"])
def test_session_state(mode: str) -> None:
    with DBPool.from_url(MYSQL_URL, max_size=1, reset=mode) as db:
        with db.connection() as conn:
            tid = conn.thread_id()
            _q(conn, "SET @poolkit_var = 5")
            _q(conn, "SET SESSION sql_mode = 'ANSI'")
            _q(conn, "CREATE TEMPORARY TABLE poolkit_tmp (x INT)")
            conn.autocommit(True)
        with db.connection() as conn:
            assert conn.thread_id() == tid
            view = (
                _q(conn, "SELECT @poolkit_var")[0][0],
                "ANSI" in _q(conn, "SELECT @@SESSION.sql_mode")[0][0],
                len(_q(conn, "SHOW TABLES LIKE 'poolkit_tmp'")) + _temp_count(conn),
                conn.get_autocommit(),
                _q(conn, "SELECT @@character_set_client")[0][0],
            )
    if mode == "discard":
        assert view == (None, False, 0, False, "utf8mb4")
    else:
        assert view == (5, True, 1, False, "utf8mb4")


def _temp_count(conn: Any) -> int:
    try:
        _q(conn, "SELECT 1 FROM poolkit_tmp")
    except pymysql.err.ProgrammingError:
        return 0
    return 1


def test_sql_error_keeps_killed_connection_is_destroyed(mysql_admin: Any) -> None:
    with DBPool.from_url(MYSQL_URL, max_size=1) as db:
        with pytest.raises(pymysql.err.ProgrammingError), db.connection() as conn:
            tid = conn.thread_id()
            _q(conn, "SELEC 1")
        with pytest.raises(pymysql.err.OperationalError) as info, db.connection() as conn:
            assert conn.thread_id() == tid
            with mysql_admin.cursor() as cur:
                cur.execute(f"KILL {tid}")
            _q(conn, "SELECT 1")
        assert info.value.args[0] in (2006, 2013, 1927)
        assert db.stats().closed_broken_total == 1
        with db.connection() as conn:
            assert conn.thread_id() != tid


def test_killed_idle_connection_is_replaced_without_error(mysql_admin: Any) -> None:
    with DBPool.from_url(MYSQL_URL, max_size=1, peek_after_idle=0) as db:
        with db.connection() as conn:
            tid = conn.thread_id()
        with mysql_admin.cursor() as cur:
            cur.execute(f"KILL {tid}")
        for _ in range(500):  # wait for the server to close it
            with mysql_admin.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM information_schema.processlist WHERE id=%s", (tid,)
                )
                if cur.fetchone()[0] == 0:
                    break
        assert db.fetchone("SELECT 1") == (1,)
        assert db.stats().check_failed_total == 1


def test_aiomysql_basics_and_cancellation() -> None:
    async def main() -> None:
        async with AsyncDBPool.from_url(MYSQL_URL, max_size=2, reset="discard") as db:
            assert await db.fetchone("SELECT %s", (4,)) == (4,)

            async def slow() -> None:
                async with db.connection() as conn, conn.cursor() as cur:
                    await cur.execute("SELECT SLEEP(0.5)")

            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert db.stats().closed_broken_total == 1
            results = await asyncio.gather(*(db.fetchone("SELECT %s", (i,)) for i in range(10)))
            assert results == [(i,) for i in range(10)]
            async with db.connection() as conn, conn.cursor() as cur:
                tid = conn.thread_id()
                await cur.execute("SET @poolkit_var = 5")
                await cur.execute("BEGIN")
            async with db.connection() as conn, conn.cursor() as cur:
                assert conn.thread_id() == tid
                await cur.execute("SELECT @poolkit_var")
                assert await cur.fetchone() == (None,)  # COM_RESET_CONNECTION cleared it
                assert not conn.server_status & 1 and not conn.get_autocommit()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_discard_keeps_connect_time_sql_mode_and_init_command() -> None:
    options = {"sql_mode": "ANSI_QUOTES", "init_command": "SET @poolkit_init = 7"}
    with DBPool.from_url(MYSQL_URL, max_size=1, reset="discard", connect_kwargs=options) as db:
        for _ in range(2):
            with db.connection() as conn:
                assert "ANSI_QUOTES" in _q(conn, "SELECT @@SESSION.sql_mode")[0][0]
                assert _q(conn, "SELECT @poolkit_init")[0][0] == 7

    async def main() -> None:
        async with AsyncDBPool.from_url(
            MYSQL_URL, max_size=1, reset="discard", connect_kwargs=options
        ) as adb:
            for _ in range(2):
                async with adb.connection() as conn, conn.cursor() as cur:
                    await cur.execute("SELECT @@SESSION.sql_mode, @poolkit_init")
                    mode, init = await cur.fetchone()
                    assert "ANSI_QUOTES" in mode and init == 7

    asyncio.run(asyncio.wait_for(main(), 30))
