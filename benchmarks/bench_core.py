"""Benchmark: the acquire+release cycle of poolkit's Pool/AsyncPool against its peers, in one run.

Every pool lends a cheap fake resource (a DB-API-like object whose ``rollback``/``close`` do
nothing), so what is measured is the pool itself. Peers: a bare ``threading.Lock`` +
``collections.deque`` (the floor; a Condition wakes a waiter when it is empty), SQLAlchemy's
``QueuePool``, DBUtils' ``PooledDB``, generic-connection-pool's threading ``ConnectionPool``
and psycopg_pool's ``ConnectionPool`` (real connections to the machine's PostgreSQL: its
borrow and return do no I/O; skipped when the server does not answer). Async: ``AsyncPool``
against an ``asyncio.Queue`` floor and SQLAlchemy's ``AsyncAdaptedQueuePool`` driven through
``greenlet_spawn`` the way ``AsyncEngine`` drives it.

Scenarios: 1 thread on 4 resources (uncontended: best of 3 runs, no timing inside the loop);
8 and 64 threads on 8 resources, with nothing done while holding and with ``time.sleep(0)``
(releases the GIL) while holding. Contended runs time every acquire (wait p50/p99/max) and
count each thread's completions (min/mean and max/min show starvation).

Usage::

    .venv/bin/python benchmarks/bench_core.py            # ~1 s per cell
    .venv/bin/python benchmarks/bench_core.py --quick    # ~0.2 s per cell
    .venv/bin/python benchmarks/bench_core.py --json out.json --only poolkit,floor
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# -------------------------------------------------------------------- the fake resource


class FakeConnection:
    """A DB-API-shaped connection that does nothing (SQLAlchemy/DBUtils call these)."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def cursor(self) -> Any:
        raise NotImplementedError("the benchmark never runs a query")


# -------------------------------------------------------------------- sync implementations


@dataclass
class SyncImpl:
    """One pool under test: ``get()`` returns a token, ``put(token)`` gives it back."""

    name: str
    get: Callable[[], Any]
    put: Callable[[Any], Any]
    close: Callable[[], Any]


class FloorPool:
    """The floor: a Lock around a deque; a Condition on the same lock when it runs dry."""

    def __init__(self, n: int) -> None:
        self._items = deque(FakeConnection() for _ in range(n))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0

    def get(self) -> FakeConnection:
        with self._lock:
            items = self._items
            if items:
                return items.pop()
            self._waiting += 1
            try:
                while not items:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            return items.pop()

    def put(self, conn: FakeConnection) -> None:
        with self._lock:
            self._items.append(conn)
            if self._waiting:
                self._cond.notify()


def make_floor(n: int) -> SyncImpl:
    pool = FloorPool(n)
    return SyncImpl("floor (Lock+deque)", pool.get, pool.put, lambda: None)


def make_poolkit(n: int) -> SyncImpl:
    from poolkit import Lease, Pool

    pool: Pool[FakeConnection] = Pool(FakeConnection, min_size=n, max_size=n, name="bench")
    pool.open()
    return SyncImpl("poolkit Pool", pool.get, Lease.release, pool.close)


def make_poolkit_with(n: int) -> SyncImpl:
    """poolkit through ``with pool.acquire()`` (the idiom), timed as enter + exit."""
    from poolkit import Lease, Pool

    pool: Pool[FakeConnection] = Pool(FakeConnection, min_size=n, max_size=n, name="bench")
    pool.open()
    acquire = pool.acquire
    enter = Lease.__enter__
    leave = Lease.__exit__

    def get() -> Any:
        lease = acquire()
        enter(lease)
        return lease

    def put(lease: Any) -> None:
        leave(lease, None, None, None)

    return SyncImpl("poolkit Pool (with)", get, put, pool.close)


def make_sqlalchemy(n: int) -> SyncImpl:
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(FakeConnection, pool_size=n, max_overflow=0, timeout=60)
    warm = [pool.connect() for _ in range(n)]
    close_fairy = type(warm[0]).close
    for c in warm:
        c.close()
    return SyncImpl("SQLAlchemy QueuePool", pool.connect, close_fairy, pool.dispose)


def _fake_dbapi() -> Any:
    """A minimal DB-API 2 module whose ``connect`` returns a :class:`FakeConnection`."""
    import types

    module = types.ModuleType("fake_dbapi")
    module.apilevel = "2.0"  # type: ignore[attr-defined]
    module.threadsafety = 1  # type: ignore[attr-defined]
    module.paramstyle = "qmark"  # type: ignore[attr-defined]

    class Error(Exception):
        pass

    for name in ("Error", "InterfaceError", "DatabaseError", "OperationalError", "InternalError"):
        setattr(module, name, Error if name == "Error" else type(name, (Error,), {}))
    module.connect = lambda *a, **k: FakeConnection()  # type: ignore[attr-defined]
    return module


def make_dbutils(n: int) -> SyncImpl:
    from dbutils.pooled_db import PooledDB

    pool = PooledDB(_fake_dbapi(), mincached=n, maxcached=n, maxconnections=n, blocking=True)
    warm = [pool.connection() for _ in range(n)]
    close_conn = type(warm[0]).close
    for c in warm:
        c.close()
    return SyncImpl("DBUtils PooledDB", pool.connection, close_conn, pool.close)


def make_gcp(n: int) -> SyncImpl:
    from generic_connection_pool.threading import BaseConnectionManager, ConnectionPool

    class Manager(BaseConnectionManager[str, FakeConnection]):
        def create(self, endpoint: str, timeout: float | None = None) -> FakeConnection:
            return FakeConnection()

        def dispose(
            self, endpoint: str, conn: FakeConnection, timeout: float | None = None
        ) -> None:
            conn.close()

        def check_aliveness(
            self, endpoint: str, conn: FakeConnection, timeout: float | None = None
        ) -> bool:
            return True

    pool: ConnectionPool[str, FakeConnection] = ConnectionPool(
        Manager(),
        min_idle=n,
        max_size=n,
        total_max_size=n,
        idle_timeout=3600,
        max_lifetime=3600,
        acquire_timeout=60,
    )
    warm = [pool.acquire("bench") for _ in range(n)]
    for c in warm:
        pool.release(c, "bench")
    return SyncImpl(
        "generic-connection-pool",
        functools.partial(pool.acquire, "bench"),
        functools.partial(pool.release, endpoint="bench"),
        pool.close,
    )


PG_CONNINFO = os.environ.get("BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def make_psycopg_pool(n: int) -> SyncImpl:
    import psycopg
    from psycopg_pool import ConnectionPool

    psycopg.connect(PG_CONNINFO, connect_timeout=3).close()  # skip fast when no server
    pool = ConnectionPool(PG_CONNINFO, min_size=n, max_size=n, timeout=60, open=True)
    pool.wait(timeout=30)
    return SyncImpl("psycopg_pool (real conns)", pool.getconn, pool.putconn, pool.close)


SYNC_IMPLS: list[tuple[str, Callable[[int], SyncImpl]]] = [
    ("poolkit", make_poolkit),
    ("floor", make_floor),
    ("sqlalchemy", make_sqlalchemy),
    ("dbutils", make_dbutils),
    ("gcp", make_gcp),
    ("psycopg_pool", make_psycopg_pool),
]


# -------------------------------------------------------------------- measurement


@dataclass
class Result:
    """One cell of the table."""

    scenario: str
    impl: str
    workers: int
    resources: int
    hold: str
    cycles: int
    seconds: float
    ns_per_cycle: float
    wait_p50_us: float | None = None
    wait_p99_us: float | None = None
    wait_max_ms: float | None = None
    per_worker_min: int | None = None
    per_worker_mean: float | None = None
    per_worker_max: int | None = None
    starved: int | None = None  # workers with < 10 % of the mean completions
    vs_poolkit: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _loop_untimed(get: Any, put: Any, hold: Any, flag: list[bool]) -> int:
    n = 0
    if hold is None:
        while flag[0]:
            put(get())
            n += 1
    else:
        while flag[0]:
            t = get()
            hold(0)
            put(t)
            n += 1
    return n


def _loop_timed(get: Any, put: Any, hold: Any, flag: list[bool], waits: list[int]) -> int:
    clock = time.perf_counter_ns
    append = waits.append
    n = 0
    if hold is None:
        while flag[0]:
            t0 = clock()
            t = get()
            append(clock() - t0)
            put(t)
            n += 1
    else:
        while flag[0]:
            t0 = clock()
            t = get()
            append(clock() - t0)
            hold(0)
            put(t)
            n += 1
    return n


def _single(impl: SyncImpl, duration: float) -> tuple[int, float]:
    """Run one thread for ``duration``, checking the clock every 2000 cycles."""
    get, put = impl.get, impl.put
    n = 0
    start = time.perf_counter()
    end = start + duration
    while True:
        for _ in range(2000):
            put(get())
        n += 2000
        now = time.perf_counter()
        if now >= end:
            return n, now - start


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _fairness(result: Result, counts: list[int], waits: list[int]) -> None:
    waits.sort()
    result.wait_p50_us = _percentile(waits, 0.50) / 1e3
    result.wait_p99_us = _percentile(waits, 0.99) / 1e3
    result.wait_max_ms = (waits[-1] if waits else 0) / 1e6
    mean = sum(counts) / len(counts)
    result.per_worker_min = min(counts)
    result.per_worker_max = max(counts)
    result.per_worker_mean = mean
    result.starved = sum(1 for c in counts if c < 0.1 * mean)


def run_sync(
    maker: Callable[[int], SyncImpl], workers: int, resources: int, hold: str, duration: float
) -> Result:
    impl = maker(resources)
    scenario = f"sync {workers}T/{resources}R hold={hold}"
    try:
        for _ in range(2000):  # warm-up
            impl.put(impl.get())
        gc.collect()
        if workers == 1:
            best: tuple[int, float] | None = None
            for _ in range(3):
                n, secs = _single(impl, duration / 2)
                if best is None or secs / max(n, 1) < best[1] / max(best[0], 1):
                    best = (n, secs)
            assert best is not None
            n, secs = best
            return Result(scenario, impl.name, 1, resources, hold, n, secs, secs / max(n, 1) * 1e9)
        sleeper = time.sleep if hold == "sleep(0)" else None
        flag = [True]
        counts = [0] * workers
        waits: list[list[int]] = [[] for _ in range(workers)]
        barrier = threading.Barrier(workers + 1)

        def worker(i: int) -> None:
            barrier.wait()
            counts[i] = _loop_timed(impl.get, impl.put, sleeper, flag, waits[i])

        threads = [
            threading.Thread(target=worker, args=(i,), name=f"bench-{i}") for i in range(workers)
        ]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        time.sleep(duration)
        flag[0] = False
        for t in threads:
            t.join()
        secs = time.perf_counter() - start
        total = sum(counts)
        result = Result(
            scenario, impl.name, workers, resources, hold, total, secs, secs / max(total, 1) * 1e9
        )
        _fairness(result, counts, [w for ws in waits for w in ws])
        return result
    finally:
        impl.close()


# -------------------------------------------------------------------- async implementations


@dataclass
class AsyncImpl:
    """An async pool under test; ``run`` drives one task's loop and returns its count."""

    name: str
    run: Callable[[list[bool], bool, list[int] | None], Awaitable[int]]
    close: Callable[[], Awaitable[Any]]


async def make_async_poolkit(n: int) -> AsyncImpl:
    from poolkit import AsyncLease, AsyncPool

    pool: AsyncPool[FakeConnection] = AsyncPool(
        FakeConnection, min_size=n, max_size=n, name="bench"
    )
    await pool.open()
    get = pool.get
    release = AsyncLease.release

    async def run(flag: list[bool], hold: bool, waits: list[int] | None) -> int:
        n = 0
        sleep = asyncio.sleep
        if waits is None:
            while flag[0]:
                lease = await get()
                if hold:
                    await sleep(0)
                await release(lease)
                n += 1
        else:
            clock = time.perf_counter_ns
            append = waits.append
            while flag[0]:
                t0 = clock()
                lease = await get()
                append(clock() - t0)
                if hold:
                    await sleep(0)
                await release(lease)
                n += 1
        return n

    return AsyncImpl("poolkit AsyncPool", run, pool.close)


async def make_async_floor(n: int) -> AsyncImpl:
    queue: asyncio.Queue[FakeConnection] = asyncio.Queue()
    for _ in range(n):
        queue.put_nowait(FakeConnection())
    get = queue.get
    put = queue.put_nowait

    async def run(flag: list[bool], hold: bool, waits: list[int] | None) -> int:
        n = 0
        sleep = asyncio.sleep
        if waits is None:
            while flag[0]:
                conn = await get()
                if hold:
                    await sleep(0)
                put(conn)
                n += 1
        else:
            clock = time.perf_counter_ns
            append = waits.append
            while flag[0]:
                t0 = clock()
                conn = await get()
                append(clock() - t0)
                if hold:
                    await sleep(0)
                put(conn)
                n += 1
        return n

    async def close() -> None:
        pass

    return AsyncImpl("floor (asyncio.Queue)", run, close)


async def make_async_sqlalchemy(n: int) -> AsyncImpl:
    from sqlalchemy.pool import AsyncAdaptedQueuePool
    from sqlalchemy.util import await_only, greenlet_spawn

    pool = AsyncAdaptedQueuePool(FakeConnection, pool_size=n, max_overflow=0, timeout=60)
    connect = pool.connect

    def body(flag: list[bool], hold: bool, waits: list[int] | None) -> int:
        # runs inside one greenlet per task; a checkout that must wait suspends the task
        # through await_only(asyncio.Queue.get()), as under AsyncEngine
        n = 0
        sleep = asyncio.sleep
        clock = time.perf_counter_ns
        while flag[0]:
            t0 = clock()
            conn = connect()
            if waits is not None:
                waits.append(clock() - t0)
            if hold:
                await_only(sleep(0))
            conn.close()
            n += 1
        return n

    async def run(flag: list[bool], hold: bool, waits: list[int] | None) -> int:
        return int(await greenlet_spawn(body, flag, hold, waits))

    async def close() -> None:
        await greenlet_spawn(pool.dispose)

    warm = [await greenlet_spawn(connect) for _ in range(n)]
    for c in warm:
        await greenlet_spawn(c.close)
    return AsyncImpl("SQLAlchemy AsyncAdaptedQueuePool", run, close)


async def greenlet_spawn_cost(samples: int = 2000) -> float:
    """ns per ``greenlet_spawn`` of a no-op: what AsyncEngine adds to each pool call."""
    from sqlalchemy.util import greenlet_spawn

    def noop() -> None:
        pass

    start = time.perf_counter()
    for _ in range(samples):
        await greenlet_spawn(noop)
    return (time.perf_counter() - start) / samples * 1e9


ASYNC_IMPLS: list[tuple[str, Callable[[int], Awaitable[AsyncImpl]]]] = [
    ("poolkit", make_async_poolkit),
    ("floor", make_async_floor),
    ("sqlalchemy", make_async_sqlalchemy),
]


async def run_async(
    maker: Callable[[int], Awaitable[AsyncImpl]],
    tasks: int,
    resources: int,
    hold: bool,
    duration: float,
) -> Result:
    impl = await maker(resources)
    hold_name = "sleep(0)" if hold else "none"
    scenario = f"async {tasks}t/{resources}R hold={hold_name}"
    loop = asyncio.get_running_loop()
    try:
        warm = [True]
        loop.call_later(0.02, warm.__setitem__, 0, False)
        await impl.run(warm, True, None)
        gc.collect()
        if tasks == 1 and not hold:
            best: tuple[int, float] | None = None
            for _ in range(3):
                flag = [True]
                start = time.perf_counter()
                n = await _run_for(impl, flag, start + duration / 2)
                secs = time.perf_counter() - start
                if best is None or secs / max(n, 1) < best[1] / max(best[0], 1):
                    best = (n, secs)
            assert best is not None
            n, secs = best
            return Result(
                scenario, impl.name, 1, resources, hold_name, n, secs, secs / max(n, 1) * 1e9
            )
        flag = [True]
        waits: list[list[int]] = [[] for _ in range(tasks)]
        start = time.perf_counter()
        loop.call_later(duration, flag.__setitem__, 0, False)
        counts = await asyncio.gather(*(impl.run(flag, hold, waits[i]) for i in range(tasks)))
        secs = time.perf_counter() - start
        total = sum(counts)
        result = Result(
            scenario,
            impl.name,
            tasks,
            resources,
            hold_name,
            total,
            secs,
            secs / max(total, 1) * 1e9,
        )
        _fairness(result, list(counts), [w for ws in waits for w in ws])
        return result
    finally:
        await impl.close()


async def _run_for(impl: AsyncImpl, flag: list[bool], end: float) -> int:
    """Drive one task until ``end``: a task that never waits never yields to the loop, so a
    watchdog thread (not a loop callback) clears the flag."""

    def watchdog() -> None:
        delay = end - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        flag[0] = False

    t = threading.Thread(target=watchdog, name="bench-watchdog")
    t.start()
    try:
        return await impl.run(flag, False, None)
    finally:
        t.join()


# -------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[Result]) -> None:
    by_scenario: dict[str, list[Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    head = (
        f"{'implementation':34} {'ns/cycle':>9} {'x poolkit':>9} {'wait p50':>9} "
        f"{'p99 us':>8} {'max ms':>8} {'min/mean':>8} {'max/min':>8} {'starved':>7}"
    )
    for scenario, rows in by_scenario.items():
        print(f"\n== {scenario}")
        print(head)
        for r in rows:
            fair_min = (
                None
                if r.per_worker_min is None or not r.per_worker_mean
                else r.per_worker_min / r.per_worker_mean
            )
            spread = (
                None
                if r.per_worker_min is None or r.per_worker_max is None
                else (r.per_worker_max / r.per_worker_min if r.per_worker_min else float("inf"))
            )
            print(
                f"{r.impl[:34]:34} {r.ns_per_cycle:9.0f} {_fmt(r.vs_poolkit, '9.2f')} "
                f"{_fmt(r.wait_p50_us, '9.2f')} {_fmt(r.wait_p99_us, '8.1f')} "
                f"{_fmt(r.wait_max_ms, '8.1f')} {_fmt(fair_min, '8.2f')} "
                f"{_fmt(spread, '8.1f')} {'' if r.starved is None else r.starved:>7}"
                + (f"  {r.note}" if r.note else "")
            )


LEGEND = (
    "ns/cycle: wall time / completed acquire+release cycles (all workers). x poolkit: ns/cycle "
    "relative to poolkit in the same scenario (>1 = slower). wait: time spent inside acquire "
    "(p50/p99 in us, max in ms). min/mean and max/min: per-worker completions (1.00 and 1.0 = "
    "perfectly even). starved: workers that completed < 10 % of the mean."
)


def markdown_table(results: list[Result]) -> str:
    """The results as one Markdown table (for docs and the README)."""
    lines = [
        "| scenario | implementation | ns/cycle | x poolkit | wait p99 (us) | max wait (ms) "
        "| per-worker min/mean | starved |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        fair = (
            "-"
            if r.per_worker_min is None or not r.per_worker_mean
            else f"{r.per_worker_min / r.per_worker_mean:.2f}"
        )
        lines.append(
            f"| {r.scenario} | {r.impl} | {r.ns_per_cycle:,.0f} | {_fmt(r.vs_poolkit, '.2f')} "
            f"| {_fmt(r.wait_p99_us, ',.0f')} | {_fmt(r.wait_max_ms, '.1f')} | {fair} "
            f"| {'-' if r.starved is None else r.starved} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (~0.2 s per cell)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write a Markdown table")
    parser.add_argument(
        "--only", help="comma-separated subset: " + ",".join(k for k, _ in SYNC_IMPLS)
    )
    parser.add_argument("--no-async", action="store_true")
    parser.add_argument("--no-sync", action="store_true")
    args = parser.parse_args(argv)
    duration = args.duration or (0.2 if args.quick else 1.0)
    only = set(args.only.split(",")) if args.only else None

    results: list[Result] = []
    skipped: dict[str, str] = {}
    print(
        f"poolkit core benchmark: Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {duration:g} s per cell; switch interval "
        f"{sys.getswitchinterval() * 1e3:g} ms",
        flush=True,
    )

    def keep(key: str) -> bool:
        return only is None or key in only

    if not args.no_sync:
        scenarios = [(1, 4, "none"), (8, 8, "none"), (8, 8, "sleep(0)"), (64, 8, "none"),
                     (64, 8, "sleep(0)")]  # fmt: skip
        makers = list(SYNC_IMPLS)
        if keep("poolkit"):
            makers.insert(1, ("poolkit-with", make_poolkit_with))
        for workers, resources, hold in scenarios:
            rows = []
            for key, maker in makers:
                if not keep(key.split("-")[0]) or key in skipped:
                    continue
                if key == "poolkit-with" and workers != 1:
                    continue
                try:
                    rows.append(run_sync(maker, workers, resources, hold, duration))
                except Exception as exc:  # a peer that cannot run here is skipped, loudly
                    skipped[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            _ratios(rows)
            results += rows
            print_table(rows)

    if not args.no_async:
        for tasks, resources, hold in [(1, 8, False), (64, 8, True), (8, 8, True)]:
            rows = []
            for key, amaker in ASYNC_IMPLS:
                if not keep(key) or f"async-{key}" in skipped:
                    continue
                try:
                    rows.append(asyncio.run(run_async(amaker, tasks, resources, hold, duration)))
                except Exception as exc:
                    skipped[f"async-{key}"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            _ratios(rows)
            results += rows
            print_table(rows)
        print(
            "\nasync contended runs hold with `await asyncio.sleep(0)`: a task that awaits "
            "nothing while holding never yields, so there would be no contention."
        )
        if keep("sqlalchemy"):
            with contextlib.suppress(Exception):
                cost = asyncio.run(greenlet_spawn_cost())
                print(
                    "SQLAlchemy's async pool runs each task's loop inside one greenlet here; "
                    f"AsyncEngine adds a greenlet_spawn per pool call: {cost:.0f} ns each "
                    "on this machine (not in the table)."
                )

    print("\n" + LEGEND)
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    if args.json:
        payload = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "duration_s": duration,
            "skipped": skipped,
            "results": [asdict(r) for r in results],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(results))
        print(f"wrote {args.markdown}")
    return 0


def _ratios(rows: list[Result]) -> None:
    base = next((r for r in rows if r.impl.startswith("poolkit") and "(with)" not in r.impl), None)
    if base is None:
        return
    for r in rows:
        r.vs_poolkit = r.ns_per_cycle / base.ns_per_cycle


if __name__ == "__main__":
    raise SystemExit(main())
