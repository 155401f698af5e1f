"""DBPool over sqlite3 and DuckDB files: borrowing, transactions, reset, error triage, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from poolkit import PoolTimeout
from poolkit.db import DBAPIFactory, DBPool


def test_sqlite_file_execute_fetch_and_transaction(tmp_path: Path) -> None:
    with DBPool.from_url(f"sqlite:///{tmp_path / 'app.db'}?max_size=3") as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        assert db.execute("INSERT INTO t VALUES (?)", (1,)) == 1
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(ZeroDivisionError), db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (3)")
            raise ZeroDivisionError
        assert db.fetchall("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert db.fetchone("SELECT count(*) FROM t") == (2,)
        assert db.paramstyle == "qmark"
        assert "app.db" in repr(db) and db.stats().in_use == 0


def test_sqlite_open_transaction_is_rolled_back_on_return(tmp_path: Path) -> None:
    with DBPool.from_url(f"sqlite:///{tmp_path / 'a.db'}", max_size=1) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        with db.connection() as conn:
            conn.execute("INSERT INTO t VALUES (1)")  # implicit BEGIN, never committed
            conn.row_factory = sqlite3.Row
            first = id(conn)
        with db.connection() as conn:
            assert id(conn) == first  # same connection, reset rather than replaced
            assert not conn.in_transaction and conn.row_factory is None
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_sqlite_sql_error_keeps_connection_closed_one_is_replaced(tmp_path: Path) -> None:
    with DBPool.from_url(f"sqlite:///{tmp_path / 'a.db'}", max_size=1) as db:
        with pytest.raises(sqlite3.OperationalError), db.connection() as conn:
            first = id(conn)
            conn.execute("SELEC 1")
        with db.connection() as conn:
            assert id(conn) == first
            conn.close()  # a borrower closes it behind the pool's back
        # the reset on return finds it closed: destroyed, not pooled
        assert db.stats().size == 0 and db.stats().destroyed_total == 1
        with pytest.raises(sqlite3.ProgrammingError), db.connection() as conn:
            conn.close()
            conn.execute("SELECT 1")
        assert db.stats().closed_broken_total == 1
        assert db.fetchone("SELECT 1") == (1,)


def test_memory_database_is_shared_by_pooled_connections() -> None:
    with DBPool.from_url("sqlite:///:memory:", max_size=2) as db:
        db.execute("CREATE TABLE t (x)")
        a = db.connection()
        b = db.connection()
        try:
            assert a.resource is not b.resource
            assert b.resource.execute("SELECT count(*) FROM t").fetchone() == (0,)
        finally:
            a.release()
            b.release()
        assert db.name == "sqlite:///:memory:"


def test_generic_dbapi_connect_function(tmp_path: Path) -> None:
    path = str(tmp_path / "g.db")
    with DBPool(
        connect=sqlite3.connect,
        args=(path,),
        kwargs={"check_same_thread": False},
        max_size=2,
        acquire_timeout=0.2,
    ) as db:
        assert isinstance(db.factory, DBAPIFactory)
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (?)", (5,))
        assert db.fetchall("SELECT x FROM t") == [(5,)]
        held = [db.connection(), db.connection()]
        with pytest.raises(PoolTimeout):
            db.connection(timeout=0.05)
        for lease in held:
            lease.release()


def test_generic_factory_scrubs_password_from_connect_errors() -> None:
    def connect(**kwargs: object) -> object:
        raise ConnectionRefusedError(f"cannot log in with password={kwargs['password']}")

    db = DBPool(connect=connect, kwargs={"password": "Hunter2-Secret"}, acquire_timeout=0.5)
    try:
        with pytest.raises(PoolTimeout) as info, db.connection():
            pass
        text = repr(info.value) + str(info.value.__cause__) + repr(db) + repr(db.factory)
        assert "Hunter2-Secret" not in text
    finally:
        db.close()


def test_generic_factory_scrubs_every_password_like_kwarg() -> None:
    def connect(**kwargs: object) -> object:
        raise ConnectionRefusedError(f"cannot open the key ({kwargs['sslpassword']!r})")

    db = DBPool(connect=connect, kwargs={"sslpassword": "Key-Pass-4e1d"}, acquire_timeout=0.5)
    try:
        with pytest.raises(PoolTimeout) as info, db.connection():
            pass
        assert "Key-Pass-4e1d" not in repr(info.value) + str(info.value.__cause__)
    finally:
        db.close()


def test_sqlite_many_threads_write_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}?journal_mode=wal&timeout=30"
    with DBPool.from_url(url, max_size=4) as db:
        db.execute("CREATE TABLE t (worker INTEGER, n INTEGER)")
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for n in range(25):
                    with db.transaction() as conn:
                        conn.execute("INSERT INTO t VALUES (?, ?)", (worker, n))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert db.fetchone("SELECT count(*) FROM t") == (200,)
        assert db.stats().size <= 4 and db.stats().in_use == 0


def test_duckdb_threads_read_and_write_one_file(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    path = tmp_path / "x.duckdb"
    with DBPool.from_url(f"duckdb:///{path}", max_size=4) as db:
        db.execute("CREATE TABLE events (worker INTEGER, n INTEGER)")
        errors: list[BaseException] = []
        seen: list[int] = []

        def writer(worker: int) -> None:
            try:
                for n in range(20):
                    db.execute("INSERT INTO events VALUES (?, ?)", (worker, n))
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(20):
                    row = db.fetchone("SELECT count(*) FROM events")
                    seen.append(row[0])
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        threads += [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert db.fetchone("SELECT count(*) FROM events") == (80,)
        assert all(0 <= n <= 80 for n in seen)
    # the instance was closed with the pool: another process-level open works
    import duckdb

    again = duckdb.connect(str(path))
    try:
        assert again.execute("SELECT count(*) FROM events").fetchone() == (80,)
    finally:
        again.close()


def test_duckdb_open_transaction_is_rolled_back_on_return(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    with DBPool.from_url(f"duckdb:///{tmp_path / 'r.duckdb'}", max_size=1) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        with db.connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            conn.execute("INSERT INTO t VALUES (1)")
        assert db.fetchone("SELECT count(*) FROM t") == (0,)
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        assert db.fetchall("SELECT x FROM t") == [(2,)]


def test_duckdb_transaction_is_atomic(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    with DBPool.from_url(f"duckdb:///{tmp_path / 't.duckdb'}", max_size=2) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(ZeroDivisionError), db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT INTO t VALUES (2)")
            raise ZeroDivisionError
        assert db.fetchone("SELECT count(*) FROM t") == (0,)
