"""SQLAlchemy 2 engines on PoolkitPool: Core queries against the machine's PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytestmark = pytest.mark.postgres

sa = pytest.importorskip("sqlalchemy")

from poolkit.db.sqlalchemy import PoolkitPool  # noqa: E402

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_core_queries_through_poolclass() -> None:
    engine = sa.create_engine(URL, poolclass=PoolkitPool, pool_size=3, max_overflow=1)
    try:
        meta = sa.MetaData()
        table = sa.Table(
            "poolkit_sa_items",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(40)),
        )
        meta.drop_all(engine)
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": i, "name": f"n{i}"} for i in range(10)])
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            names = conn.execute(sa.select(table.c.name).where(table.c.id < 3)).scalars().all()
        assert count == 10 and sorted(names) == ["n0", "n1", "n2"]
        pool = engine.pool
        assert isinstance(pool, PoolkitPool)
        assert pool.checkedout() == 0 and pool.checkedin() >= 1
        assert pool.stats().max_size == 4
        meta.drop_all(engine)
    finally:
        engine.dispose()
        engine.pool.poolkit.close()


def test_threads_share_engine_and_rollback_on_return() -> None:
    engine = sa.create_engine(URL, poolclass=PoolkitPool, pool_size=2, max_overflow=0)
    try:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for n in range(20):
                    with engine.connect() as conn:
                        assert conn.execute(sa.text("SELECT :n"), {"n": n}).scalar_one() == n
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        stats = engine.pool.stats()
        assert stats.size <= 2 and stats.in_use == 0 and stats.acquired_total >= 160
        with engine.connect() as conn:  # SQLAlchemy's reset-on-return rolled back
            conn.execute(sa.text("CREATE TEMP TABLE poolkit_sa_t (x int)"))
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == pid
            exists = conn.execute(sa.text("SELECT to_regclass('poolkit_sa_t')")).scalar_one()
            assert exists is None
    finally:
        engine.dispose()
        engine.pool.poolkit.close()


def test_checkout_timeout_and_configure_and_invalidation(pg_admin: Any) -> None:
    Tuned = PoolkitPool.configure(idle_timeout=60, name="tuned")
    engine = sa.create_engine(URL, poolclass=Tuned, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        assert engine.pool.poolkit.name == "tuned"
        held = engine.connect()
        try:
            with pytest.raises(sa.exc.TimeoutError, match="timed out"):
                engine.connect()
            pid = held.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        finally:
            held.close()
        pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        with engine.connect() as conn:  # the record was invalidated and reconnects
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
        old = engine.pool
        engine.dispose()
        assert engine.pool is not old and old.poolkit.closed
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
        engine.pool.poolkit.close()


def test_connect_error_surfaces_as_sqlalchemy_error() -> None:
    engine = sa.create_engine(
        "postgresql+psycopg://postgres:Canary-Sa-Pw@127.0.0.1:1/test?connect_timeout=2",
        poolclass=PoolkitPool,
        pool_timeout=0.5,
    )
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            engine.connect()
        assert "Canary-Sa-Pw" not in str(info.value)
    finally:
        engine.dispose()
        engine.pool.poolkit.close()


def test_engine_with_a_ready_pool_object() -> None:
    import psycopg

    pool = PoolkitPool(
        lambda: psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test"),
        pool_size=2,
        max_overflow=0,
        poolkit_options={"name": "ready-made"},
    )
    engine = sa.create_engine("postgresql+psycopg://", pool=pool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 40 + 2")).scalar_one() == 42
        assert engine.pool is pool and pool.stats().name == "ready-made"
        assert "Checked out connections: 0" in pool.status()
    finally:
        engine.dispose()
        engine.pool.poolkit.close()
