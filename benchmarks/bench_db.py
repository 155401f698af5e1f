"""Benchmark: ``SELECT 1`` per request against PostgreSQL, poolkit.db against its peers.

Threads: a new connection per request, one persistent connection per thread (the limit),
poolkit ``DBPool``, psycopg_pool, SQLAlchemy ``QueuePool``, DBUtils ``PooledDB`` and
generic-connection-pool, with 1 and 16 threads. asyncio: poolkit ``AsyncDBPool`` over
psycopg and over asyncpg, psycopg ``AsyncConnectionPool`` and asyncpg's own pool (with
and without its reset query), with 1 and 64 tasks. Every connection is autocommit (a
read-only request handler), every pool holds ``--pool-size`` connections (default 10).

Prints queries/s, the ratio to the persistent connection (threads) or to poolkit
(asyncio), and fairness: the fewest and most requests any worker completed.

    .venv/bin/python benchmarks/bench_db.py            # about 4 minutes
    .venv/bin/python benchmarks/bench_db.py --quick    # about 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
URL = "postgresql://postgres@127.0.0.1:5432/test"
ASYNCPG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SQL = "SELECT 1"


@dataclass
class Result:
    name: str
    workers: int
    qps: float
    counts: list[int]

    @property
    def fairness(self) -> str:
        return f"{min(self.counts)}/{max(self.counts)}"


def query(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(SQL)
    cur.fetchone()
    cur.close()


# ------------------------------------------------------------------------------ threads

WorkerFn = Callable[[], None]


def run_threads(make_worker: Callable[[], WorkerFn], workers: int, duration: float) -> list[int]:
    fns = [make_worker() for _ in range(workers)]
    counts = [0] * workers
    start = threading.Barrier(workers + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        fn = fns[i]
        start.wait()
        n = 0
        while not stop.is_set():
            fn()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    stop.wait(duration)
    stop.set()
    for t in threads:
        t.join()
    return counts


def bench_new_connection(workers: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    def fn() -> None:
        conn = psycopg.connect(DSN, autocommit=True)
        query(conn)
        conn.close()

    return (lambda: fn), lambda: None


def bench_persistent(workers: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    conns: list[Any] = []

    def make() -> WorkerFn:
        conn = psycopg.connect(DSN, autocommit=True)
        conns.append(conn)
        return lambda: query(conn)

    return make, lambda: [c.close() for c in conns] and None


def bench_poolkit(size: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    from poolkit.db import DBPool

    db = DBPool.from_url(URL, min_size=size, max_size=size, connect_kwargs={"autocommit": True})
    db.open()
    connection = db.connection

    def fn() -> None:
        with connection() as conn:
            query(conn)

    return (lambda: fn), db.close


def bench_psycopg_pool(size: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(DSN, min_size=size, max_size=size, kwargs={"autocommit": True}, open=True)
    pool.wait()

    def fn() -> None:
        with pool.connection() as conn:
            query(conn)

    return (lambda: fn), pool.close


def bench_sqlalchemy(size: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(lambda: psycopg.connect(DSN, autocommit=True), pool_size=size, max_overflow=0)
    warm = [pool.connect() for _ in range(size)]
    for c in warm:
        c.close()

    def fn() -> None:
        conn = pool.connect()
        query(conn)
        conn.close()

    return (lambda: fn), pool.dispose


def bench_dbutils(size: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    from dbutils.pooled_db import PooledDB

    pool = PooledDB(
        psycopg,
        mincached=size,
        maxcached=size,
        maxconnections=size,
        blocking=True,
        conninfo=DSN,
        autocommit=True,
    )

    def fn() -> None:
        conn = pool.connection()
        query(conn)
        conn.close()

    return (lambda: fn), pool.close


def bench_generic(size: int) -> tuple[Callable[[], WorkerFn], Callable[[], None]]:
    from generic_connection_pool.threading import BaseConnectionManager, ConnectionPool

    class Manager(BaseConnectionManager[str, Any]):
        def create(self, endpoint: str, timeout: float | None = None) -> Any:
            return psycopg.connect(DSN, autocommit=True)

        def dispose(self, endpoint: str, conn: Any, timeout: float | None = None) -> None:
            conn.close()

        def on_release(self, endpoint: str, conn: Any) -> None:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()

    pool = ConnectionPool(Manager(), min_idle=size, max_size=size, acquire_timeout=30)
    warm = [pool.acquire("pg") for _ in range(size)]
    for c in warm:
        pool.release(c, "pg")

    def fn() -> None:
        with pool.connection("pg") as conn:
            query(conn)

    return (lambda: fn), pool.close


SYNC = [
    ("new connection per request", bench_new_connection, True),
    ("persistent connection (limit)", bench_persistent, True),
    ("poolkit DBPool", bench_poolkit, False),
    ("psycopg_pool ConnectionPool", bench_psycopg_pool, False),
    ("SQLAlchemy QueuePool", bench_sqlalchemy, False),
    ("DBUtils PooledDB", bench_dbutils, False),
    ("generic-connection-pool", bench_generic, False),
]


# ------------------------------------------------------------------------------ asyncio

AsyncFn = Callable[[], Awaitable[None]]


async def run_tasks(fn: AsyncFn, workers: int, duration: float) -> list[int]:
    counts = [0] * workers
    stop = asyncio.Event()

    async def loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            await fn()
            n += 1
        counts[i] = n

    tasks = [asyncio.ensure_future(loop(i)) for i in range(workers)]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks)
    return counts


async def abench_persistent_psycopg(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)

    async def fn() -> None:
        cur = await conn.execute(SQL)
        await cur.fetchone()

    return fn, conn.close


async def abench_persistent_asyncpg(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="test")

    async def fn() -> None:
        await conn.fetchval(SQL)

    return fn, conn.close


async def abench_poolkit_psycopg(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    from poolkit.db import AsyncDBPool

    db = AsyncDBPool.from_url(
        URL, min_size=size, max_size=size, connect_kwargs={"autocommit": True}
    )
    await db.open()
    connection = db.connection

    async def fn() -> None:
        async with connection() as conn:
            cur = await conn.execute(SQL)
            await cur.fetchone()

    return fn, db.close


async def abench_poolkit_asyncpg(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    from poolkit.db import AsyncDBPool

    db = AsyncDBPool.from_url(ASYNCPG_URL, min_size=size, max_size=size)
    await db.open()
    connection = db.connection

    async def fn() -> None:
        async with connection() as conn:
            await conn.fetchval(SQL)

    return fn, db.close


async def abench_psycopg_pool(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        DSN, min_size=size, max_size=size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)

    async def fn() -> None:
        async with pool.connection() as conn:
            cur = await conn.execute(SQL)
            await cur.fetchone()

    return fn, pool.close


async def _asyncpg_pool(size: int, reset: bool) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    import asyncpg

    class NoReset(asyncpg.Connection):  # type: ignore[misc]
        def get_reset_query(self) -> str:
            return ""

    pool = await asyncpg.create_pool(
        host="127.0.0.1",
        user="postgres",
        database="test",
        min_size=size,
        max_size=size,
        connection_class=asyncpg.Connection if reset else NoReset,
    )

    async def fn() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(SQL)

    return fn, pool.close


async def abench_asyncpg_pool(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    return await _asyncpg_pool(size, reset=True)


async def abench_asyncpg_noreset(size: int) -> tuple[AsyncFn, Callable[[], Awaitable[Any]]]:
    return await _asyncpg_pool(size, reset=False)


ASYNC = [
    ("persistent psycopg AsyncConnection", abench_persistent_psycopg, True),
    ("persistent asyncpg Connection", abench_persistent_asyncpg, True),
    ("poolkit AsyncDBPool (psycopg)", abench_poolkit_psycopg, False),
    ("poolkit AsyncDBPool (asyncpg)", abench_poolkit_asyncpg, False),
    ("psycopg_pool AsyncConnectionPool", abench_psycopg_pool, False),
    ("asyncpg Pool", abench_asyncpg_pool, False),
    ("asyncpg Pool, reset query off", abench_asyncpg_noreset, False),
]


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (noisier)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median)")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--tasks", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--only", default="", help="run only contenders whose name has this")
    args = parser.parse_args()
    duration = args.duration or (0.5 if args.quick else 0.8)
    rounds = args.rounds or (1 if args.quick else 5)
    size = args.pool_size
    runs: dict[tuple[str, int], list[list[int]]] = {}
    print(
        f"SELECT 1 per request, PostgreSQL 127.0.0.1:5432, pool size {size}, "
        f"{duration} s/point, median of {rounds} interleaved rounds"
    )
    for rnd in range(rounds):
        for workers in args.threads:
            for name, setup, per_thread in SYNC:
                if args.only and args.only not in name:
                    continue
                make, teardown = setup(workers if per_thread else size)
                try:
                    run_threads(make, workers, min(0.2, duration / 4))  # warm-up
                    counts = run_threads(make, workers, duration)
                finally:
                    teardown()
                runs.setdefault((name, workers), []).append(counts)
                qps = sum(counts) / duration
                print(f"  [{rnd + 1}] {name:<36} threads={workers:<3} {qps:>9,.0f} q/s", flush=True)

        async def run_async(rnd: int = rnd) -> None:
            for workers in args.tasks:
                for name, setup, single in ASYNC:
                    if args.only and args.only not in name:
                        continue
                    if single and workers > 1:
                        continue  # one connection serves one task at a time
                    fn, teardown = await setup(size)
                    try:
                        await run_tasks(fn, workers, min(0.2, duration / 4))
                        counts = await run_tasks(fn, workers, duration)
                    finally:
                        await teardown()
                    runs.setdefault((name, workers), []).append(counts)
                    qps = sum(counts) / duration
                    print(
                        f"  [{rnd + 1}] {name:<36} tasks={workers:<3}   {qps:>9,.0f} q/s",
                        flush=True,
                    )

        asyncio.run(run_async())
    results = []
    for (name, workers), all_counts in runs.items():
        ordered = sorted(all_counts, key=sum)
        median = ordered[len(ordered) // 2]
        results.append(Result(name, workers, sum(median) / duration, median))
    report(results)


def report(results: list[Result]) -> None:
    async_names = {n for n, _, _ in ASYNC}
    print()
    print("| contender | workers | queries/s | ratio | fairness (min/max per worker) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        if r.name in async_names:
            flavour = "asyncpg" if "asyncpg" in r.name else "psycopg"
            pool = [x for x in results if x.name in async_names and x.workers == r.workers]
            if r.workers == 1:
                base = next(
                    (x for x in pool if x.name.startswith("persistent") and flavour in x.name), None
                )
            else:
                base = next(
                    (x for x in pool if x.name.startswith("poolkit") and flavour in x.name), None
                )
        else:
            base = next(
                (
                    x
                    for x in results
                    if (x.workers == r.workers and x.name.startswith("persistent ("))
                    or (x.workers == r.workers and x.name == "persistent connection (limit)")
                ),
                None,
            )
        ratio = f"{r.qps / base.qps:.2f} x {short(base.name)}" if base and base is not r else "1.00"
        print(f"| {r.name} | {r.workers} | {r.qps:,.0f} | {ratio} | {r.fairness} |")


def short(name: str) -> str:
    if name.startswith("persistent"):
        return "persistent"
    return "poolkit"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
