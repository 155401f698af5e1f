"""Benchmark: keyed and endpoint pools: overhead over a plain Pool, eviction path, selection cost.

All pools lend a cheap fake resource, so what is measured is the pooling itself.

* acquire+release cycle, one thread: ``Pool`` (the baseline), ``KeyedPool`` on 1 key and
  on 100 keys (no cap; ``max_total`` large enough to keep everything; ``max_total`` small
  enough that every borrow closes another key's idle resource and creates one), the peer
  generic-connection-pool (``ConnectionPool`` keyed by endpoint, ``total_max_size``), and
  ``EndpointPool`` with each strategy over 3 endpoints;
* the same with 8 threads (``Pool`` vs ``KeyedPool`` on 8 keys under ``max_total``);
* asyncio: ``AsyncPool`` vs ``AsyncKeyedPool``;
* endpoint selection alone (``EndpointPolicy.pick``) per strategy, 3 and 16 endpoints.

Usage::

    .venv/bin/python benchmarks/bench_keyed.py           # ~1 s per cell
    .venv/bin/python benchmarks/bench_keyed.py --quick   # ~0.2 s per cell
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from poolkit import AsyncPool, Pool
from poolkit._endpoint_policy import STRATEGIES, EndpointPolicy
from poolkit.async_keyed import AsyncKeyedPool
from poolkit.endpoints import Endpoint, EndpointPool
from poolkit.keyed import KeyedPool


class Fake:
    __slots__ = ("closed", "key")

    def __init__(self, key: object = None) -> None:
        self.key = key
        self.closed = False

    def close(self) -> None:
        self.closed = True


def timed_loop(step: Callable[[int], None], seconds: float) -> float:
    """Run ``step(i)`` in batches for about ``seconds``; returns ns per step (best of 3)."""
    best = float("inf")
    for _ in range(3):
        n, batch = 0, 1000
        gc.collect()
        start = time.perf_counter()
        while True:
            for i in range(n, n + batch):
                step(i)
            n += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = min(best, elapsed / n * 1e9)
    return best


def threaded(step: Callable[[int], None], threads: int, seconds: float) -> float:
    """Total throughput of ``threads`` threads running ``step``: ns per operation overall."""
    stop = threading.Event()
    counts = [0] * threads

    def run(t: int) -> None:
        i = 0
        while not stop.is_set():
            for _ in range(200):
                step(t * 1_000_000 + i)
                i += 1
        counts[t] = i

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return (time.perf_counter() - start) / max(1, sum(counts)) * 1e9


def cycle_pool(pool: Pool[Any]) -> Callable[[int], None]:
    def step(_: int) -> None:
        with pool.acquire():
            pass

    return step


def cycle_keyed(pool: KeyedPool[Any, Any], keys: list[Any]) -> Callable[[int], None]:
    n = len(keys)

    def step(i: int) -> None:
        with pool.acquire(keys[i % n]):
            pass

    return step


def bench_sync(seconds: float, rows: list[tuple[str, float]]) -> None:
    keys100 = [f"tenant-{i}" for i in range(100)]
    with Pool(Fake, max_size=10) as pool:
        rows.append(("Pool (baseline)", timed_loop(cycle_pool(pool), seconds)))
    with KeyedPool(Fake, max_per_key=10) as kp:
        rows.append(("KeyedPool, 1 key", timed_loop(cycle_keyed(kp, ["a"]), seconds)))
    with KeyedPool(Fake, max_per_key=10) as kp:
        rows.append(("KeyedPool, 100 keys", timed_loop(cycle_keyed(kp, keys100), seconds)))
    with KeyedPool(Fake, max_per_key=10, max_total=200) as kp:
        rows.append(
            ("KeyedPool, 100 keys, max_total=200", timed_loop(cycle_keyed(kp, keys100), seconds))
        )
    with KeyedPool(Fake, destroy=Fake.close, max_per_key=10, max_total=50) as kp:
        ns = timed_loop(cycle_keyed(kp, keys100), seconds)
        rows.append(("KeyedPool, 100 keys, max_total=50 (evict+create)", ns))
    try:
        from generic_connection_pool.threading import BaseConnectionManager, ConnectionPool
    except ImportError:  # pragma: no cover - optional peer
        print("generic-connection-pool not installed: peer skipped")
    else:

        class Manager(BaseConnectionManager[str, Fake]):
            def create(self, endpoint: str, timeout: float | None = None) -> Fake:
                return Fake(endpoint)

            def dispose(self, endpoint: str, conn: Fake, timeout: float | None = None) -> None:
                conn.close()

        gcp = ConnectionPool(Manager(), max_size=10, total_max_size=200, min_idle=0)
        try:

            def gcp_step(i: int) -> None:
                with gcp.connection(keys100[i % 100]):
                    pass

            rows.append(("generic-connection-pool, 100 endpoints", timed_loop(gcp_step, seconds)))
        finally:
            gcp.close()
    for strategy in STRATEGIES:
        eps = [Endpoint(f"replica-{i}", weight=i + 1) for i in range(3)]
        with EndpointPool(Fake, eps, strategy=strategy, max_per_endpoint=10) as ep:

            def ep_step(_: int, ep: EndpointPool[Any, Any] = ep) -> None:
                with ep.acquire():
                    pass

            rows.append((f"EndpointPool {strategy}, 3 endpoints", timed_loop(ep_step, seconds)))


def bench_threads(seconds: float, rows: list[tuple[str, float]]) -> None:
    keys8 = [f"k{i}" for i in range(8)]
    with Pool(Fake, max_size=8) as pool:
        rows.append(("8 threads: Pool max_size=8", threaded(cycle_pool(pool), 8, seconds)))
    with KeyedPool(Fake, max_per_key=8) as kp:
        step = cycle_keyed(kp, keys8)
        rows.append(("8 threads: KeyedPool 8 keys, no cap", threaded(step, 8, seconds)))
    with KeyedPool(Fake, max_per_key=1, max_total=8) as kp:
        step = cycle_keyed(kp, keys8)
        rows.append(
            ("8 threads: KeyedPool 8 keys, max_per_key=1, max_total=8", threaded(step, 8, seconds))
        )
    with KeyedPool(Fake, max_per_key=2, max_total=8, destroy=Fake.close) as kp:
        step = cycle_keyed(kp, keys8)
        rows.append(
            (
                "8 threads: KeyedPool 8 keys, max_per_key=2, max_total=8 (churn)",
                threaded(step, 8, seconds),
            )
        )


def bench_async(seconds: float, rows: list[tuple[str, float]]) -> None:
    async def fake_create() -> Fake:
        return Fake()

    async def fake_keyed(key: str) -> Fake:
        return Fake(key)

    async def loop(acquire: Callable[[int], Any]) -> float:
        best = float("inf")
        for _ in range(3):
            n = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / 3:
                for i in range(n, n + 500):
                    async with acquire(i):
                        pass
                n += 500
            best = min(best, (time.perf_counter() - start) / n * 1e9)
        return best

    async def main() -> None:
        async with AsyncPool(fake_create, max_size=10) as pool:
            rows.append(("AsyncPool (baseline)", await loop(lambda i: pool.acquire())))
        keys = [f"t{i}" for i in range(100)]
        async with AsyncKeyedPool(fake_keyed, max_per_key=10) as kp:
            rows.append(("AsyncKeyedPool, 1 key", await loop(lambda i: kp.acquire("a"))))
        async with AsyncKeyedPool(fake_keyed, max_per_key=10, max_total=200) as kp:
            rows.append(
                (
                    "AsyncKeyedPool, 100 keys, max_total=200",
                    await loop(lambda i: kp.acquire(keys[i % 100])),
                )
            )

    asyncio.run(main())


def bench_selection(seconds: float, rows: list[tuple[str, float]]) -> None:
    for n in (3, 16):
        for strategy in STRATEGIES:
            policy = EndpointPolicy(strategy, rng=random.Random(1))
            ids = [policy.add(f"e{i}", weight=i + 1) for i in range(n)]
            for j, ep in enumerate(ids):
                for _ in range(j % 4):
                    policy.begin(ep)
            pick = policy.pick

            def step(_: int, pick: Callable[[float], int | None] = pick) -> None:
                pick(0.0)

            rows.append((f"pick() {strategy}, {n} endpoints", timed_loop(step, seconds / 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~0.2 s per cell instead of ~1 s")
    args = parser.parse_args()
    seconds = 0.2 if args.quick else 1.0
    sync_rows: list[tuple[str, float]] = []
    bench_sync(seconds, sync_rows)
    base = sync_rows[0][1]
    print(f"\nacquire+release, 1 thread (ratio = time / Pool's {base:.0f} ns)")
    for name, ns in sync_rows:
        print(f"  {name:<62} {ns:9.0f} ns  x{ns / base:5.2f}")
    thread_rows: list[tuple[str, float]] = []
    bench_threads(seconds, thread_rows)
    base = thread_rows[0][1]
    print("\nacquire+release, 8 threads, ns per operation overall (ratio vs Pool)")
    for name, ns in thread_rows:
        print(f"  {name:<62} {ns:9.0f} ns  x{ns / base:5.2f}")
    async_rows: list[tuple[str, float]] = []
    bench_async(seconds, async_rows)
    base = async_rows[0][1]
    print("\nasyncio acquire+release (ratio vs AsyncPool)")
    for name, ns in async_rows:
        print(f"  {name:<62} {ns:9.0f} ns  x{ns / base:5.2f}")
    sel_rows: list[tuple[str, float]] = []
    bench_selection(seconds, sel_rows)
    print("\nendpoint selection alone (EndpointPolicy.pick)")
    for name, ns in sel_rows:
        print(f"  {name:<62} {ns:9.0f} ns")


if __name__ == "__main__":
    main()
