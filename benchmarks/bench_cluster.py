"""Benchmark the Redis fleet budget: lease round trips and its effect on pool throughput.

Part 1, round trips against the machine's Redis (127.0.0.1:6379), one client, p50 and ops/s:
``PING`` (the floor), poolkit's lease ``acquire`` and ``release`` (one EVALSHA each) and the
pair, and the closest peer primitive, redis-py's ``Lock`` (a mutex: ``SET NX PX`` + a Lua
release) acquire+release. Sync (redis-py) and asyncio (redis.asyncio).

Part 2, a reuse-heavy pool workload: ``Pool(max_size=4)`` with 1 and 8 threads doing
acquire/release of an idle resource, budget off vs ``RedisBudget(limit=100)`` on. Leases are
taken only when a resource is created, so the ratio should be ~1.00.

Usage::

    .venv/bin/python benchmarks/bench_cluster.py            # ~15 s
    .venv/bin/python benchmarks/bench_cluster.py --quick    # ~4 s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from poolkit import Pool
from poolkit.cluster import AsyncRedisBudget, RedisBudget

URL = "redis://127.0.0.1:6379/0"


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(p50 seconds per call, fastest call in seconds) over ``n`` calls."""
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat), min(lat)


async def atimed(fn: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat), min(lat)


def row(label: str, p50: float, fastest: float, ping: tuple[float, float]) -> None:
    print(
        f"  {label:<40} p50 {p50 * 1e3:7.3f} ms ({p50 / ping[0]:5.2f}x PING)   "
        f"min {fastest * 1e3:7.3f} ms ({fastest / ping[1]:5.2f}x PING)"
    )


def bench_round_trips(n: int, rounds: int) -> dict[str, float]:
    """Each operation is timed in ``rounds`` interleaved chunks; the best chunk's p50 counts,
    so a burst of load from other processes on the machine does not skew one row alone."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(URL)
    budget = RedisBudget(URL, name, 1_000_000, lease_ttl=30, restart_quiet=0)
    lock = r.lock(f"bench-lock-{name}", timeout=30)
    toks: list[object] = []

    def lock_pair() -> None:
        lock.acquire(blocking=False)
        lock.release()

    ops: dict[str, Callable[[], object]] = {
        "PING": r.ping,
        "poolkit lease acquire (EVALSHA)": lambda: toks.append(budget.acquire(1.0)),
        "poolkit lease release (EVALSHA)": lambda: budget.release(toks.pop()),
        "poolkit lease acquire+release": lambda: budget.release(budget.acquire(1.0)),
        "peer: redis-py Lock acquire+release": lock_pair,
    }
    best: dict[str, tuple[float, float]] = {}
    try:
        r.ping()
        budget.release(budget.acquire(1.0))  # load the scripts
        for _ in range(200):  # warm up
            r.ping()
        chunk = max(100, n // rounds)
        for _ in range(rounds):
            for label, fn in ops.items():
                p50, fastest = timed(fn, chunk)
                old = best.get(label, (p50, fastest))
                best[label] = (min(old[0], p50), min(old[1], fastest))
        ping = best["PING"]
        print(f"sync (redis-py), 1 client, best of {rounds} interleaved rounds x {chunk}:")
        for label, (p50, fastest) in best.items():
            row(label, p50, fastest, ping)
    finally:
        budget.close()
        r.delete(*r.scan_iter(match=f"{{poolkit:budget:{name}}}:*"))
        r.close()
    return {k: v[0] for k, v in best.items()}


def bench_async_round_trips(n: int) -> None:
    async def main() -> None:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        r = aioredis.Redis.from_url(URL)
        budget = AsyncRedisBudget(URL, name, 1_000_000, lease_ttl=30, restart_quiet=0)
        try:
            await budget.release(await budget.acquire(1.0))

            async def pair() -> None:
                await budget.release(await budget.acquire(1.0))

            ping = await atimed(r.ping, n)
            p = await atimed(pair, n)
            print("asyncio (redis.asyncio), 1 task:")
            row("PING", *ping, ping)
            row("poolkit lease acquire+release", *p, ping)
        finally:
            await budget.close()
            keys = [k async for k in r.scan_iter(match=f"{{poolkit:budget:{name}}}:*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()

    asyncio.run(main())


def pool_throughput(budget: RedisBudget | None, threads: int, seconds: float) -> float:
    pool: Pool[object] = Pool(object, max_size=4, budget=budget, check_after_idle=None)
    with pool.acquire():  # create the resources first: the loop measures reuse only
        pass
    stop = threading.Event()
    counts = [0] * threads

    def run(i: int) -> None:
        n = 0
        acquire = pool.acquire
        while not stop.is_set():
            for _ in range(100):
                with acquire():
                    pass
            n += 100
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    pool.close()
    return sum(counts) / elapsed


def bench_pool(seconds: float, rounds: int) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    budget = RedisBudget(URL, name, 100, lease_ttl=10, restart_quiet=0)
    print(f"Pool(max_size=4) reuse loop, best of {rounds} x {seconds:.1f} s, ops/s:")
    print(
        f"  {'threads':<10} {'budget off':>12} {'budget on':>12} {'on/off':>8} {'median pair':>12}"
    )
    try:
        for threads in (1, 8):
            offs, ons = [], []
            for _ in range(rounds):  # interleaved, so machine noise hits both alike
                offs.append(pool_throughput(None, threads, seconds))
                ons.append(pool_throughput(budget, threads, seconds))
            off, on = max(offs), max(ons)
            paired = statistics.median(b / a for a, b in zip(offs, ons, strict=True))
            print(f"  {threads:<10} {off:12.0f} {on:12.0f} {on / off:8.3f} {paired:12.3f}")
    finally:
        budget.close()
        with redis.Redis.from_url(URL) as r:
            keys = list(r.scan_iter(match=f"{{poolkit:budget:{name}}}:*"))
            if keys:
                r.delete(*keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (~4 s)")
    args = ap.parse_args()
    n = 2000 if args.quick else 10000
    bench_round_trips(n, 5)
    bench_async_round_trips(n // 2)
    bench_pool(0.5 if args.quick else 1.0, 3 if args.quick else 5)


if __name__ == "__main__":
    main()
