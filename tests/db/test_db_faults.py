"""Fault tests on a private PostgreSQL: restart under load, killed idle backends, a
blackholed network, and a server that is down at start (threads and asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from poolkit import PoolTimeout
from poolkit.db import AsyncDBPool, DBPool

from helpers import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

psycopg = pytest.importorskip("psycopg")


def _url(pg: Any, port: int | None = None, scheme: str = "postgresql") -> str:
    return f"{scheme}://postgres@127.0.0.1:{port or pg.port}/postgres"


def _kill_client_backends(pg: Any) -> int:
    out = pg.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return int(out)


def _client_backends(pg: Any) -> int:
    return int(
        pg.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    )


# ------------------------------------------------------------------ (1) restart under load


def test_restart_under_load_sixteen_threads(private_postgres: Any) -> None:
    pg = private_postgres
    db = DBPool.from_url(
        _url(pg), max_size=8, acquire_timeout=5, connect_kwargs={"connect_timeout": 2}
    )
    stop = threading.Event()
    back_at: list[float] = []
    after_back: list[tuple[bool, str]] = []
    lock = threading.Lock()
    ok_before = [0]

    def worker() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                assert db.fetchone("SELECT 1") == (1,)
                outcome = (True, "")
            except Exception as exc:
                outcome = (False, repr(exc))
            with lock:
                if back_at and started >= back_at[0]:
                    after_back.append(outcome)
                elif outcome[0]:
                    ok_before[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: ok_before[0] >= 200, timeout=30, what="load before the restart")
        pg.restart("fast")
        with lock:
            back_at.append(time.monotonic())
        wait_for(lambda: len(after_back) >= 400, timeout=60, what="400 requests after restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not any(t.is_alive() for t in threads)
        failures = [why for ok, why in after_back if not ok]
        assert failures == [], failures[:3]
        stats = db.stats()
        assert stats.in_use == 0 and stats.waiting == 0
        assert stats.created_total - stats.destroyed_total == stats.size
        assert stats.closed_broken_total + stats.check_failed_total >= 1  # the restart was seen
    finally:
        db.close()


def test_async_restart_under_load_with_cancellation(private_postgres: Any) -> None:
    pg = private_postgres
    rng = random.Random(3)

    async def main() -> None:
        db = AsyncDBPool.from_url(
            _url(pg), max_size=8, acquire_timeout=5, connect_kwargs={"connect_timeout": 2}
        )
        back_at: list[float] = []
        after_back: list[tuple[bool, str]] = []
        stop = asyncio.Event()

        async def worker() -> None:
            for _ in range(100_000):
                if stop.is_set():
                    return
                started = time.monotonic()
                try:
                    assert await db.fetchone("SELECT 1") == (1,)
                    outcome = (True, "")
                except Exception as exc:
                    outcome = (False, repr(exc))
                if back_at and started >= back_at[0]:
                    after_back.append(outcome)

        async def canceller() -> None:
            # mixed in: short-lived borrows cancelled at random points
            for _ in range(100_000):
                if stop.is_set():
                    return
                task = asyncio.ensure_future(db.fetchone("SELECT pg_sleep(0.005)"))
                await asyncio.sleep(rng.random() * 0.01)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

        tasks = [asyncio.ensure_future(worker()) for _ in range(32)]
        tasks += [asyncio.ensure_future(canceller()) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pg.restart, "fast")
            back_at.append(time.monotonic())
            for _ in range(6000):
                if len(after_back) >= 400:
                    break
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        try:
            assert len(after_back) >= 400
            failures = [why for ok, why in after_back if not ok]
            assert failures == [], failures[:3]
            # a borrower cancelled during its query has its reset finished in the background
            for _ in range(1000):
                if db.stats().in_use == 0:
                    break
                await asyncio.sleep(0.01)
            stats = db.stats()
            assert stats.in_use == 0 and stats.waiting == 0
            assert stats.created_total - stats.destroyed_total == stats.size
        finally:
            await db.close()

    asyncio.run(asyncio.wait_for(main(), 90))


# ------------------------------------------------------------ (2) idle backends terminated


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg", "sync"])
def test_idle_backends_terminated_next_borrowers_see_no_error(
    private_postgres: Any, scheme: str
) -> None:
    pg = private_postgres
    if scheme == "sync":
        with DBPool.from_url(_url(pg), min_size=4, max_size=4, peek_after_idle=0) as db:
            db.open()
            leases = [db.connection() for _ in range(4)]
            killed = {lease.resource.info.backend_pid for lease in leases}
            for lease in leases:
                lease.release()
            assert _kill_client_backends(pg) >= 4
            wait_for(lambda: _client_backends(pg) == 0, what="backends gone")
            for i in range(8):
                assert db.fetchone("SELECT %s::int", (i,)) == (i,)
            leases = [db.connection() for _ in range(4)]
            alive = {lease.resource.info.backend_pid for lease in leases}
            for lease in leases:
                lease.release()
            assert not alive & killed  # every killed connection was destroyed
            stats = db.stats()
            assert stats.destroyed_total >= 4 and stats.closed_broken_total == 0, stats
            assert stats.created_total - stats.destroyed_total == stats.size
        return

    q = "SELECT $1::int" if "asyncpg" in scheme else "SELECT %s::int"

    async def main() -> None:
        async with AsyncDBPool.from_url(
            _url(pg, scheme=scheme), min_size=4, max_size=4, peek_after_idle=0
        ) as db:
            await db.open()
            assert await asyncio.to_thread(_kill_client_backends, pg) >= 4
            await asyncio.to_thread(
                wait_for, lambda: _client_backends(pg) == 0, 10.0, 0.005, "backends gone"
            )
            results = await asyncio.gather(*(db.fetchone(q, (i,)) for i in range(8)))
            assert results == [(i,) for i in range(8)]
            stats = db.stats()
            assert stats.destroyed_total >= 4 and stats.closed_broken_total == 0, stats
            assert stats.created_total - stats.destroyed_total == stats.size

    asyncio.run(asyncio.wait_for(main(), 60))


# ------------------------------------------------------------------ (3) blackholed network


def test_blackholed_network_borrowers_time_out_never_hang(
    private_postgres: Any, tcp_proxy: Callable[..., Any]
) -> None:
    pg = private_postgres
    proxy = tcp_proxy(("127.0.0.1", pg.port))
    db = DBPool.from_url(
        _url(pg, proxy.port),
        min_size=2,
        max_size=2,
        acquire_timeout=2,
        check_after_idle=0,
        ping_timeout=0.5,
        connect_kwargs={"connect_timeout": 1},
    )
    try:
        db.open()
        assert db.fetchone("SELECT 1") == (1,)
        proxy.set_mode("freeze")
        outcomes: list[BaseException | None] = []
        lock = threading.Lock()

        def borrower() -> None:
            try:
                db.fetchone("SELECT 1")
                result: BaseException | None = None
            except Exception as exc:
                result = exc
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=borrower, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads), "a borrower hung on the blackhole"
        assert len(outcomes) == 4
        assert all(isinstance(o, (PoolTimeout, psycopg.OperationalError)) for o in outcomes)
        proxy.set_mode("pass")
        proxy.cut_all()
        wait_for(lambda: _ok(db), timeout=15, what="recovery after the blackhole")
        assert db.stats().in_use == 0
    finally:
        db.close(timeout=2)


def _ok(db: DBPool) -> bool:
    try:
        return db.fetchone("SELECT 1") == (1,)
    except Exception:
        return False


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg"])
def test_async_blackhole_with_cancellation(
    private_postgres: Any, tcp_proxy: Callable[..., Any], scheme: str
) -> None:
    pg = private_postgres
    proxy = tcp_proxy(("127.0.0.1", pg.port))
    kwargs = {"connect_timeout": 1}

    async def main() -> None:
        db = AsyncDBPool.from_url(
            _url(pg, proxy.port, scheme),
            min_size=2,
            max_size=2,
            acquire_timeout=2,
            check_after_idle=0,
            ping_timeout=0.5,
            connect_kwargs=kwargs,
        )
        try:
            await db.open()
            assert await db.fetchone("SELECT 1") == (1,)
            await asyncio.to_thread(proxy.set_mode, "freeze")
            tasks = [asyncio.ensure_future(db.fetchone("SELECT 1")) for _ in range(6)]
            await asyncio.sleep(0.1)
            tasks[0].cancel()  # cancellation mixed in
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
            assert isinstance(results[0], asyncio.CancelledError)
            for r in results[1:]:
                assert isinstance(r, (PoolTimeout, OSError, asyncio.TimeoutError)) or (
                    type(r).__module__.split(".")[0] in ("psycopg", "asyncpg")
                ), repr(r)
            await asyncio.to_thread(proxy.set_mode, "pass")
            await asyncio.to_thread(proxy.cut_all)
            for _ in range(300):
                try:
                    if await db.fetchone("SELECT 1") == (1,):
                        break
                except Exception:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("no recovery after the blackhole")
            assert db.stats().in_use == 0
        finally:
            await db.close(timeout=2)

    asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------- (4) server down at start


def test_server_down_at_start_fails_fast_then_fills(postgres_binaries: None) -> None:
    from servers import PrivatePostgres

    with PrivatePostgres(start=False) as pg:
        db = DBPool.from_url(_url(pg), min_size=2, max_size=4, acquire_timeout=1)
        try:
            db.open(wait=False)
            with pytest.raises(PoolTimeout) as info:
                db.fetchone("SELECT 1")
            cause = info.value.__cause__
            assert isinstance(cause, psycopg.OperationalError), repr(cause)
            pg.start()
            wait_for(lambda: db.stats().size >= 2, timeout=20, what="the pool to fill")
            assert db.fetchone("SELECT 1") == (1,)
        finally:
            db.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg"])
def test_async_server_down_at_start(postgres_binaries: None, scheme: str) -> None:
    from servers import PrivatePostgres

    async def main(pg: Any) -> None:
        db = AsyncDBPool.from_url(
            _url(pg, scheme=scheme), min_size=2, max_size=4, acquire_timeout=1
        )
        try:
            await db.open(wait=False)
            with pytest.raises(PoolTimeout) as info:
                await db.fetchone("SELECT 1")
            assert isinstance(info.value.__cause__, (OSError, psycopg.OperationalError)), repr(
                info.value.__cause__
            )
            await asyncio.to_thread(pg.start)
            for _ in range(400):
                if db.stats().size >= 2:
                    break
                await asyncio.sleep(0.05)
            assert db.stats().size >= 2
            assert await db.fetchone("SELECT 1") == (1,)
        finally:
            await db.close()

    with PrivatePostgres(start=False) as pg:
        asyncio.run(asyncio.wait_for(main(pg), 60))
