"""DBPool / AsyncDBPool against the machine's PostgreSQL: reset modes, triage, liveness, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import threading
from typing import Any

import pytest

from poolkit import PoolEvent, PoolTimeout
from poolkit.db import AsyncDBPool, DBPool

from .conftest import CANARY, PG_ASYNCPG_URL, PG_URL

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")

ROLE = "poolkit_db_low"


@pytest.fixture
def low_role(pg_admin: Any) -> str:
    pg_admin.execute(
        f"DO $$ BEGIN CREATE ROLE {ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    return ROLE


# --------------------------------------------------------------------------- session state


def _dirty_session(conn: Any, role: str) -> int:
    """Borrower A: leave every kind of session state behind, plus an open transaction."""
    conn.autocommit = True
    conn.execute("SET search_path = pg_catalog")
    conn.execute("CREATE TEMP TABLE poolkit_tmp (x int)")
    conn.execute("PREPARE poolkit_stmt AS SELECT 1")
    conn.execute("SELECT pg_advisory_lock(727272)")
    conn.execute("LISTEN poolkit_channel")
    conn.execute(f"SET ROLE {role}")
    conn.autocommit = False
    conn.execute("SELECT 1")  # an open transaction
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    return int(conn.info.backend_pid)


def _session_view(conn: Any) -> dict[str, Any]:
    q = conn.execute
    return {
        "user": q("SELECT current_user").fetchone()[0],
        "search_path": q("SHOW search_path").fetchone()[0],
        "temp": q("SELECT count(*) FROM pg_class WHERE relname = 'poolkit_tmp'").fetchone()[0],
        "prepared": q("SELECT count(*) FROM pg_prepared_statements").fetchone()[0],
        "locks": q(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()[0],
        "listening": q("SELECT count(*) FROM pg_listening_channels()").fetchone()[0],
    }


CLEAN = {
    "user": "postgres",
    "search_path": '"$user", public',
    "temp": 0,
    "prepared": 0,
    "locks": 0,
    "listening": 0,
}
#: what reset="rollback" leaves behind (documented in docs/db.md)
ROLLBACK_LEFTOVERS = {
    "user": ROLE,
    "search_path": "pg_catalog",
    "temp": 1,
    "prepared": 1,
    "locks": 1,
    "listening": 1,
}


@pytest.mark.parametrize(
    ("mode", "expected"), [("discard", CLEAN), ("rollback", ROLLBACK_LEFTOVERS)]
)
def test_session_state_isolation(low_role: str, mode: str, expected: dict[str, Any]) -> None:
    with DBPool.from_url(PG_URL, max_size=1, reset=mode) as db:
        with db.connection() as conn:
            pid = _dirty_session(conn, low_role)
        with db.connection() as conn:
            assert conn.info.backend_pid == pid  # the same backend, so the test means something
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.autocommit is False
            view = _session_view(conn)
            conn.rollback()
            if mode == "rollback":
                conn.autocommit = True
                conn.execute("DISCARD ALL")  # leave the shared server clean
                conn.autocommit = False
        assert view == expected


def test_rollback_reset_costs_no_round_trip_when_idle() -> None:
    with DBPool.from_url(PG_URL, max_size=1) as db:
        with db.connection() as conn:
            conn.execute("SELECT 1")
            conn.commit()
            pid = conn.info.backend_pid
            calls: list[str] = []
            conn.add_notice_handler(lambda d: calls.append(str(d)))
            real = conn.rollback

            def spy() -> None:
                calls.append("rollback")
                real()

            conn.rollback = spy
        with db.connection() as conn:
            assert conn.info.backend_pid == pid
            assert calls == []
            conn.execute("SELECT 1")  # now INTRANS: the next return must roll back
        with db.connection() as conn:
            assert calls == ["rollback"]
            del conn.rollback


def test_client_side_settings_are_restored() -> None:
    from psycopg.rows import dict_row

    with DBPool.from_url(PG_URL, max_size=1) as db:
        with db.connection() as conn:
            conn.autocommit = True
            conn.read_only = True
            conn.row_factory = dict_row
        with db.connection() as conn:
            assert conn.autocommit is False and conn.read_only is None
            assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- error triage


def test_sql_error_keeps_connection_dead_one_is_destroyed(pg_admin: Any) -> None:
    with DBPool.from_url(PG_URL, max_size=1) as db:
        with pytest.raises(psycopg.errors.SyntaxError), db.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.errors.UniqueViolation), db.transaction() as conn:
            assert conn.info.backend_pid == pid
            conn.execute("CREATE TEMP TABLE u (x int PRIMARY KEY)")
            conn.execute("INSERT INTO u VALUES (1), (1)")
        assert db.stats().closed_broken_total == 0
        with pytest.raises(psycopg.OperationalError), db.connection() as conn:
            assert conn.info.backend_pid == pid
            pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT 1")
        assert db.stats().closed_broken_total == 1 and db.stats().size == 0
        with db.connection() as conn:
            assert conn.info.backend_pid != pid
            assert conn.execute("SELECT 2").fetchone() == (2,)


def _wait_backends_gone(pg_admin: Any, pids: list[int]) -> None:
    for _ in range(500):
        row = pg_admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()
        if row[0] == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"backends {pids} still alive")


def test_idle_connections_killed_borrowers_see_no_error(pg_admin: Any) -> None:
    with DBPool.from_url(PG_URL, min_size=3, max_size=3, peek_after_idle=0) as db:
        db.open()
        leases = [db.connection() for _ in range(3)]
        pids = [lease.resource.info.backend_pid for lease in leases]
        for lease in leases:
            lease.release()
        pg_admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        _wait_backends_gone(pg_admin, pids)
        for i in range(6):
            assert db.fetchone("SELECT %s::int", (i,)) == (i,)
        stats = db.stats()
        assert stats.check_failed_total == 3
        with db.connection() as conn:
            assert conn.info.backend_pid not in pids


def test_ping_after_idle_uses_a_bounded_empty_query() -> None:
    with DBPool.from_url(PG_URL, max_size=1, check_after_idle=0, ping_timeout=2) as db:
        assert db.fetchone("SELECT 1") == (1,)
        assert db.fetchone("SELECT 1") == (1,)
        assert db.stats().check_failed_total == 0 and db.stats().created_total == 1


def test_sixteen_threads_share_a_small_pool() -> None:
    with DBPool.from_url(PG_URL, max_size=4, acquire_timeout=20) as db:
        errors: list[BaseException] = []
        done = [0] * 16

        def work(i: int) -> None:
            try:
                for n in range(30):
                    assert db.fetchone("SELECT %s::int", (n,)) == (n,)
                    done[i] += 1
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and done == [30] * 16
        s = db.stats()
        assert s.size <= 4 and s.in_use == 0 and s.created_total - s.destroyed_total == s.size


# --------------------------------------------------------------------------- credentials


def test_canary_password_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    events: list[PoolEvent] = []
    texts: list[str] = []
    good = f"postgresql://postgres:{CANARY}@127.0.0.1:5432/test"
    bad = f"postgresql://postgres:{CANARY}@127.0.0.1:1/test?connect_timeout=2"
    for url in (good, bad):
        db = DBPool.from_url(url, max_size=2, acquire_timeout=1)
        for kind in ("create", "create_error", "destroy", "timeout", "acquire", "release"):
            db.pool.on(kind, events.append)
        try:
            try:
                db.fetchone("SELECT 1")
            except PoolTimeout as exc:
                chain: BaseException | None = exc
                while chain is not None:
                    texts += [str(chain), repr(chain), repr(chain.args)]
                    chain = chain.__cause__ or chain.__context__
            texts += [repr(db), str(db.stats()), repr(db.health()), repr(db.factory), db.name]
        finally:
            db.close()
    texts += [repr(e) for e in events] + [str(e.error) for e in events if e.error]
    texts += [r.getMessage() for r in caplog.records]
    assert any("Connection refused" in t or "connection" in t.lower() for t in texts)
    assert not [t for t in texts if CANARY in t]


# --------------------------------------------------------------------------- asyncio


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("url", [PG_URL, PG_ASYNCPG_URL])
def test_async_basics_and_transactions(url: str) -> None:
    q = "SELECT $1::int" if "asyncpg" in url else "SELECT %s::int"

    async def main() -> None:
        async with AsyncDBPool.from_url(url, max_size=3) as db:
            assert await db.fetchone(q, (7,)) == (7,)
            assert await db.fetchall(q, (8,)) == [(8,)]
            await db.execute("CREATE TABLE IF NOT EXISTS poolkit_async_t (x int)")
            async with db.transaction() as conn:
                await conn.execute("DELETE FROM poolkit_async_t")
            with pytest.raises(ZeroDivisionError):
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO poolkit_async_t VALUES (1)")
                    raise ZeroDivisionError
            assert await db.fetchone("SELECT count(*) FROM poolkit_async_t") == (0,)
            results = await asyncio.gather(*(db.fetchone(q, (i,)) for i in range(40)))
            assert results == [(i,) for i in range(40)]
            assert db.stats().size <= 3 and db.stats().in_use == 0

    _run(main())


@pytest.mark.parametrize("mode", ["discard", "rollback"])
def test_asyncpg_session_state(low_role: str, mode: str) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncDBPool.from_url(PG_ASYNCPG_URL, max_size=1, reset=mode) as db:
            async with db.connection() as conn:
                pid = conn.get_server_pid()
                await conn.execute("SET search_path = pg_catalog")
                await conn.execute("CREATE TEMP TABLE poolkit_tmp (x int)")
                await conn.execute("PREPARE poolkit_stmt AS SELECT 1")
                await conn.execute("SELECT pg_advisory_lock(727273)")
                await conn.add_listener("poolkit_channel", lambda *a: None)
                await conn.execute(f"SET ROLE {low_role}")
                assert await conn.fetchval("SELECT 41 + 1") == 42  # cached statement
                tr = conn.transaction()
                await tr.start()
            async with db.connection() as conn:
                assert conn.get_server_pid() == pid and not conn.is_in_transaction()
                view = {
                    "user": await conn.fetchval("SELECT current_user"),
                    "search_path": await conn.fetchval("SHOW search_path"),
                    "temp": await conn.fetchval(
                        "SELECT count(*) FROM pg_class WHERE relname = 'poolkit_tmp'"
                    ),
                    "prepared": await conn.fetchval(
                        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'poolkit_stmt'"
                    ),
                    "locks": await conn.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND pid = pg_backend_pid()"
                    ),
                    "listening": await conn.fetchval(
                        "SELECT count(*) FROM pg_listening_channels()"
                    ),
                }
                assert await conn.fetchval("SELECT 41 + 1") == 42  # statement cache still valid
                await conn.execute("DISCARD ALL")
                return view

    view = _run(main())
    if mode == "discard":
        assert view == CLEAN
    else:
        # asyncpg's own reset() ran (a transaction and a listener were open): it runs
        # RESET ALL, UNLISTEN *, pg_advisory_unlock_all() but not SET ROLE/temp/PREPARE
        assert view == {**CLEAN, "user": low_role, "temp": 1, "prepared": 1}


@pytest.mark.parametrize("url", [PG_URL, PG_ASYNCPG_URL])
def test_async_cancellation_never_desyncs(url: str) -> None:
    q = "SELECT $1::int, pg_sleep(0.01)" if "asyncpg" in url else "SELECT %s::int, pg_sleep(0.01)"
    q1 = "SELECT $1::int" if "asyncpg" in url else "SELECT %s::int"
    rng = random.Random(7)

    async def main() -> None:
        async with AsyncDBPool.from_url(url, max_size=2, acquire_timeout=10) as db:

            async def one(n: int) -> None:
                async with db.connection() as conn:
                    if "asyncpg" in url:
                        await conn.fetch(q, n)
                    else:
                        await (await conn.execute(q, (n,))).fetchall()

            for i in range(25):
                task = asyncio.ensure_future(one(i))
                await asyncio.sleep(rng.random() * 0.02)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert await db.fetchone(q1, (i,)) == (i,)
            # a borrower cancelled mid-query has its reset finished in the background
            for _ in range(1000):
                if db.stats().in_use == 0:
                    break
                await asyncio.sleep(0.01)
            s = db.stats()
            assert s.in_use == 0 and s.created_total - s.destroyed_total == s.size

    _run(main())


def test_asyncpg_killed_connection_is_replaced(pg_admin: Any) -> None:
    async def main() -> None:
        asyncpg = pytest.importorskip("asyncpg")
        async with AsyncDBPool.from_url(PG_ASYNCPG_URL, max_size=1) as db:
            with pytest.raises(asyncpg.PostgresError):
                async with db.connection() as conn:
                    pid = conn.get_server_pid()
                    await conn.execute("SELEC 1")
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                async with db.connection() as conn:
                    assert conn.get_server_pid() == pid
                    pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    await conn.fetchval("SELECT pg_sleep(0.5)")
            assert db.stats().closed_broken_total == 1
            assert await db.fetchone("SELECT 3") == (3,)

    _run(main())


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg", "mysql"])
def test_async_canary_password_never_leaks(caplog: pytest.LogCaptureFixture, scheme: str) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    events: list[PoolEvent] = []

    async def main() -> None:
        for port in (1, None):  # a refused connect, then (PostgreSQL) a working one
            if port is None and scheme == "mysql":
                continue
            where = f"127.0.0.1:{port}" if port else "127.0.0.1:5432"
            url = f"{scheme}://postgres:{CANARY}@{where}/test"
            db = AsyncDBPool.from_url(url, max_size=2, acquire_timeout=1)
            for kind in ("create", "create_error", "destroy", "timeout"):
                db.pool.on(kind, events.append)
            try:
                try:
                    await db.fetchone("SELECT 1")
                except PoolTimeout as exc:
                    chain: BaseException | None = exc
                    while chain is not None:
                        texts.extend([str(chain), repr(chain), repr(chain.args)])
                        chain = chain.__cause__ or chain.__context__
                texts.extend([repr(db), str(db.stats()), repr(db.factory), db.name])
            finally:
                await db.close()

    _run(main())
    texts += [repr(e) for e in events] + [str(e.error) for e in events if e.error]
    texts += [r.getMessage() for r in caplog.records]
    assert len(texts) > 8
    assert not [t for t in texts if CANARY in t]


def test_reset_callable_and_broken_connection_error() -> None:
    from poolkit.db import BrokenConnectionError, PsycopgFactory

    seen: list[int] = []

    def reset(conn: Any) -> None:
        seen.append(conn.info.backend_pid)
        if conn.execute("SELECT current_setting('application_name')").fetchone()[0] == "dirty":
            raise BrokenConnectionError("tainted session: replace it")

    factory = PsycopgFactory("host=127.0.0.1 port=5432 user=postgres dbname=test", reset=reset)
    with DBPool(factory, max_size=1) as db:
        with db.connection() as conn:
            pid = conn.info.backend_pid
        with db.connection() as conn:
            assert conn.info.backend_pid == pid
            conn.execute("SET application_name = 'dirty'")
            conn.commit()
        assert seen == [pid, pid]
        assert db.stats().closed_reset_total == 1
        with db.connection() as conn:
            assert conn.info.backend_pid != pid


def test_statement_timeout_is_an_ordinary_error() -> None:
    with DBPool.from_url(PG_URL, max_size=1, connect_kwargs={"statement_timeout": 0.1}) as db:
        with pytest.raises(psycopg.errors.QueryCanceled), db.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SELECT pg_sleep(2)")
        with db.connection() as conn:  # rolled back and kept, not destroyed
            assert conn.info.backend_pid == pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert db.stats().closed_broken_total == 0


def test_transaction_is_atomic_on_autocommit_connections() -> None:
    with DBPool.from_url(PG_URL, max_size=1, connect_kwargs={"autocommit": True}) as db:
        db.execute("CREATE TABLE IF NOT EXISTS poolkit_db_atomic (x int)")
        db.execute("DELETE FROM poolkit_db_atomic")
        with pytest.raises(ZeroDivisionError), db.transaction() as conn:
            conn.execute("INSERT INTO poolkit_db_atomic VALUES (1)")
            raise ZeroDivisionError
        with db.transaction() as conn:
            conn.execute("INSERT INTO poolkit_db_atomic VALUES (2)")
        assert db.fetchall("SELECT x FROM poolkit_db_atomic") == [(2,)]
        db.execute("DROP TABLE poolkit_db_atomic")

    async def main() -> None:
        async with AsyncDBPool.from_url(
            PG_URL, max_size=1, connect_kwargs={"autocommit": True}
        ) as adb:
            await adb.execute("CREATE TABLE IF NOT EXISTS poolkit_db_atomic2 (x int)")
            await adb.execute("DELETE FROM poolkit_db_atomic2")
            with pytest.raises(ZeroDivisionError):
                async with adb.transaction() as conn:
                    await conn.execute("INSERT INTO poolkit_db_atomic2 VALUES (1)")
                    raise ZeroDivisionError
            assert await adb.fetchall("SELECT x FROM poolkit_db_atomic2") == []
            await adb.execute("DROP TABLE poolkit_db_atomic2")

    _run(main())


def _tcp_options(fd: int) -> tuple[int, int, int]:
    import socket

    sock = socket.socket(fileno=fd)
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18)),
        )
    finally:
        sock.detach()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_USER_TIMEOUT is Linux-only")
def test_keepalive_and_tcp_user_timeout_reach_the_socket() -> None:
    with DBPool.from_url(PG_URL, max_size=1) as db, db.connection() as conn:
        assert _tcp_options(conn.pgconn.socket) == (1, 30, 30_000)
    with DBPool.from_url(PG_URL, max_size=1, connect_kwargs={"tcp_user_timeout": 5000}) as db:
        with db.connection() as conn:
            assert _tcp_options(conn.pgconn.socket) == (1, 30, 5000)

    async def main() -> None:
        async with AsyncDBPool.from_url(PG_URL, max_size=1) as adb:
            async with adb.connection() as conn:
                assert _tcp_options(conn.pgconn.socket) == (1, 30, 30_000)
        async with AsyncDBPool.from_url(PG_ASYNCPG_URL, max_size=1) as adb:
            async with adb.connection() as conn:
                sock = conn._transport.get_extra_info("socket")
                assert _tcp_options(sock.fileno()) == (1, 30, 30_000)

    _run(main())
