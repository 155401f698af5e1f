"""Keyed and endpoint pools against real PostgreSQL: the global cap seen server-side, failover."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from poolkit.async_keyed import AsyncKeyedPool
from poolkit.endpoints import Endpoint, EndpointPool
from poolkit.keyed import KeyedPool

from helpers import wait_for
from servers import PrivatePostgres

DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def is_broken(conn: psycopg.Connection[Any], exc: BaseException | None) -> bool:
    return conn.closed or conn.broken or isinstance(exc, (OSError, psycopg.OperationalError))


class Sampler:
    """Counts this test's backends in pg_stat_activity, on its own connection, until stopped."""

    def __init__(self, prefix: str, interval: float = 0.01) -> None:
        self.prefix = prefix
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._conn = psycopg.connect(DSN, autocommit=True, application_name="keyed-sampler")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            (n,) = self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, %s)",
                (self.prefix,),
            ).fetchone()  # type: ignore[misc]
            self.samples.append(n)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()


@pytest.mark.postgres
def test_keyed_pool_50_keys_64_threads_never_more_than_max_total_open() -> None:
    prefix = f"pk-keyed-{os.getpid()}-"
    keys = [f"{prefix}{i:02d}" for i in range(50)]
    served = Counter[str]()
    failures: list[BaseException] = []
    lock = threading.Lock()
    per_thread = 12

    live = [0, 0]  # open connections now, and the most ever open at once (client side)

    def connect(app: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(DSN, autocommit=True, application_name=app, connect_timeout=10)
        with lock:
            live[0] += 1
            live[1] = max(live)
        return conn

    def destroy(conn: psycopg.Connection[Any]) -> None:
        conn.close()
        with lock:
            live[0] -= 1

    pool: KeyedPool[str, psycopg.Connection[Any]] = KeyedPool(
        connect,
        destroy=destroy,
        is_broken=is_broken,
        max_per_key=4,
        max_total=20,
        acquire_timeout=60.0,
        name="pg-tenants",
    )
    with Sampler(prefix) as sampler, pool:

        def worker(n: int) -> None:
            try:
                for i in range(per_thread):
                    # hot keys and a long tail: some keys reuse, most evict
                    key = keys[(n * 7 + i * 13) % (10 if i % 3 else 50)]
                    with pool.acquire(key) as conn:
                        (app,) = conn.execute("SHOW application_name").fetchone()  # type: ignore[misc]
                        assert app == key
                    with lock:
                        served[key] += 1
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(64)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(80)
        stats = pool.stats()
    assert not failures, failures[:3]
    assert sum(served.values()) == 64 * per_thread
    assert len(sampler.samples) > 5
    assert max(sampler.samples) <= 20, f"server saw {max(sampler.samples)} connections"
    # the test did load the server: sampling may miss the peak, the client-side count cannot
    assert 10 <= live[1] <= 20, f"{live[1]} connections were open at once"
    assert stats.evictions_total > 0
    assert stats.size <= 20


@pytest.mark.faults
@pytest.mark.slow
def test_endpoint_pool_kill_one_replica_under_load_then_rejoin(postgres_binaries: None) -> None:
    servers = [PrivatePostgres() for _ in range(3)]
    try:
        run_failover_scenario(servers)
    finally:
        for pg in servers:
            pg.cleanup()


def run_failover_scenario(servers: list[PrivatePostgres]) -> None:
    names = [f"pg{i}" for i in range(3)]
    victim = "pg2"

    def connect(dsn: str) -> psycopg.Connection[Any]:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3)

    pool: EndpointPool[str, psycopg.Connection[Any]] = EndpointPool(
        connect,
        [Endpoint(pg.dsn, name=name) for pg, name in zip(servers, names, strict=True)],
        destroy=lambda c: c.close(),
        is_broken=is_broken,
        strategy="round_robin",
        max_per_endpoint=4,
        failure_threshold=2,
        base_backoff=1.0,
        max_backoff=8.0,
        acquire_timeout=20.0,
        drain_timeout=1.0,
        name="replicas",
    )
    lock = threading.Lock()
    # (borrow started at, endpoint) for served requests; (started at, endpoint, error) for failures
    served: list[tuple[float, str]] = []
    failed: list[tuple[float, str, BaseException]] = []
    stop = threading.Event()

    def worker() -> None:
        for _ in range(5000):
            if stop.is_set():
                return
            started = time.monotonic()
            endpoint = "?"
            try:
                with pool.get() as conn:
                    lease_ep = pool_lease_endpoint(conn)
                    endpoint = lease_ep
                    conn.execute("SELECT 1")
                with lock:
                    served.append((started, endpoint))
            except BaseException as exc:
                with lock:
                    failed.append((started, endpoint, exc))
            stop.wait(0.002)

    def pool_lease_endpoint(conn: psycopg.Connection[Any]) -> str:
        port = conn.info.port
        return names[[pg.port for pg in servers].index(port)]

    def state(name: str) -> str:
        return next(e.state for e in pool.stats().endpoints if e.name == name)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
    with pool:
        for th in threads:
            th.start()
        wait_for(lambda: len(served) >= 200, timeout=30, what="warm-up load")
        before_kill = Counter(ep for _, ep in served)
        assert set(before_kill) == set(names)
        victim_conns = next(e.size for e in pool.stats().endpoints if e.name == victim)

        servers[2].kill()
        wait_for(lambda: state(victim) == "ejected", timeout=20, what="ejection")
        ejected_seen = time.monotonic()
        count_at_ejection = len(served)
        wait_for(lambda: len(served) >= count_at_ejection + 300, timeout=30, what="load after")

        # restart: it is probed and rejoins within its (remaining) backoff period
        servers[2].start()
        restarted = time.monotonic()
        snap = next(e for e in pool.stats().endpoints if e.name == victim)
        backoff_left = snap.ejected_for_s if snap.ejected_for_s is not None else 0.0
        wait_for(lambda: state(victim) == "healthy", timeout=30, what="rejoin")
        rejoined = time.monotonic()
        count_at_rejoin = len(served)
        wait_for(
            lambda: sum(1 for _, ep in served[count_at_rejoin:] if ep == victim) >= 20,
            timeout=30,
            what="traffic back on the restarted replica",
        )
        stop.set()
        for th in threads:
            th.join(30)
        stats = pool.stats()

    # after the ejection was seen, no borrow went to the killed replica
    late = [ep for t, ep in served if ejected_seen < t < restarted and ep == victim]
    assert late == []
    # nothing failed beyond the requests in flight on the victim's connections at the kill
    assert all(ep in (victim, "?") for _, ep, _ in failed), failed[:3]
    assert len(failed) <= max(victim_conns, 4), [repr(e) for _, _, e in failed[:5]]
    assert not any(isinstance(e, TimeoutError) for _, _, e in failed)
    # rejoined within its backoff period (plus a connect and a borrow's worth of slack)
    assert rejoined - restarted <= backoff_left + 3.0, (rejoined - restarted, backoff_left)
    ev = next(e for e in stats.endpoints if e.name == victim)
    assert ev.ejections_total >= 1 and ev.errors_total >= 2
    assert ev.last_error is not None and "password" not in ev.last_error
    assert stats.healthy == 3


@pytest.mark.postgres
def test_async_keyed_pool_asyncpg_never_more_than_max_total_open() -> None:
    import asyncio

    import asyncpg

    prefix = f"pk-akeyed-{os.getpid()}-"
    keys = [f"{prefix}{i:02d}" for i in range(20)]
    served = 0

    async def connect(app: str) -> Any:
        return await asyncpg.connect(
            host="127.0.0.1",
            port=5432,
            user="postgres",
            database="test",
            server_settings={"application_name": app},
        )

    async def main() -> int:
        nonlocal served
        pool: AsyncKeyedPool[str, Any] = AsyncKeyedPool(
            connect, destroy=lambda c: c.close(), max_per_key=3, max_total=8, acquire_timeout=60
        )
        sampler = await asyncpg.connect(
            host="127.0.0.1", port=5432, user="postgres", database="test"
        )
        peak = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                n = await sampler.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, $1)",
                    prefix,
                )
                peak = max(peak, n)
                await asyncio.sleep(0.01)

        async def worker(n: int) -> None:
            nonlocal served
            for i in range(15):
                key = keys[(n * 5 + i * 3) % len(keys)]
                async with pool.acquire(key) as conn:
                    assert await conn.fetchval("SHOW application_name") == key
                served += 1

        sampling = asyncio.create_task(sample())
        try:
            async with pool:
                await asyncio.gather(*(worker(n) for n in range(32)))
                assert pool.stats().evictions_total > 0
        finally:
            stop.set()
            await sampling
            await sampler.close()
        return peak

    peak = asyncio.run(asyncio.wait_for(main(), 80))
    assert served == 32 * 15
    assert 0 < peak <= 8, peak


@pytest.mark.faults
@pytest.mark.slow
def test_async_endpoint_pool_asyncpg_fails_over_and_rejoins(postgres_binaries: None) -> None:
    import asyncio

    import asyncpg

    from poolkit.async_endpoints import AsyncEndpointPool

    servers = [PrivatePostgres() for _ in range(2)]
    ports = {pg.port: f"pg{i}" for i, pg in enumerate(servers)}

    async def connect(port: int) -> Any:
        return await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
        )

    def broken(conn: Any, exc: BaseException | None) -> bool:
        return conn.is_closed() or isinstance(
            exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
        )

    async def main() -> None:
        pool: AsyncEndpointPool[int, Any] = AsyncEndpointPool(
            connect,
            [Endpoint(pg.port, name=ports[pg.port]) for pg in servers],
            destroy=lambda c: c.close(timeout=1),
            is_broken=broken,
            strategy="least_in_use",
            max_per_endpoint=4,
            failure_threshold=2,
            base_backoff=1.0,
            acquire_timeout=20,
            drain_timeout=1.0,
        )
        served: list[tuple[float, str]] = []
        failed: list[BaseException] = []
        stop = asyncio.Event()

        async def worker() -> None:
            for _ in range(5000):
                if stop.is_set():
                    return
                started = time.monotonic()
                try:
                    lease = await pool.get()
                    async with lease as conn:
                        await conn.fetchval("SELECT 1")
                    served.append((started, lease.endpoint.name))
                except Exception as exc:
                    failed.append(exc)
                await asyncio.sleep(0.001)

        def state(name: str) -> str:
            return next(e.state for e in pool.stats().endpoints if e.name == name)

        async def until(predicate: Any, what: str, timeout: float = 20) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)

        async with pool:
            workers = [asyncio.create_task(worker()) for _ in range(12)]
            await until(lambda: len(served) >= 100, "warm-up")
            await asyncio.to_thread(servers[1].kill)
            await until(lambda: state("pg1") == "ejected", "ejection")
            ejected_seen = time.monotonic()
            n = len(served)
            await until(lambda: len(served) >= n + 200, "load after the ejection")
            restarted_at = time.monotonic()
            await asyncio.to_thread(servers[1].start)
            await until(lambda: state("pg1") == "healthy", "rejoin")
            n = len(served)
            await until(lambda: sum(1 for _, ep in served[n:] if ep == "pg1") >= 10, "traffic back")
            stop.set()
            await asyncio.gather(*workers)
        late = [ep for t, ep in served if ejected_seen < t < restarted_at and ep == "pg1"]
        assert late == []
        assert len(failed) <= 4, [repr(e)[:120] for e in failed[:5]]
        assert not any(isinstance(e, TimeoutError) for e in failed)

    try:
        asyncio.run(asyncio.wait_for(main(), 80))
    finally:
        for pg in servers:
            pg.cleanup()
