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
    """(p50 seconds per call, calls per second) over ``n`` calls."""
    lat = []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    return statistics.median(lat), n / total


async def atimed(fn: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    lat = []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    return statistics.median(lat), n / total


def row(label: str, p50: float, ops: float, floor_p50: float) -> None:
    print(f"  {label:<44} {p50 * 1e3:8.3f} ms {ops:10.0f}/s {p50 / floor_p50:8.2f}x PING")


def bench_round_trips(n: int) -> dict[str, float]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(URL)
    budget = RedisBudget(URL, name, 1_000_000, lease_ttl=30, restart_quiet=0)
    lock = r.lock(f"bench-lock-{name}", timeout=30)
    out: dict[str, float] = {}
    try:
        r.ping()
        budget.release(budget.acquire(1.0))  # load the scripts
        for _ in range(200):  # warm up
            r.ping()
        ping, ping_ops = timed(r.ping, n)
        out["ping"] = ping
        print("sync (redis-py), 1 client:")
        row("PING", ping, ping_ops, ping)
        toks = []
        acq, acq_ops = timed(lambda: toks.append(budget.acquire(1.0)), n)
        rel, rel_ops = timed(lambda: budget.release(toks.pop()), n)
        pair, pair_ops = timed(lambda: budget.release(budget.acquire(1.0)), n)
        row("poolkit lease acquire (EVALSHA)", acq, acq_ops, ping)
        row("poolkit lease release (EVALSHA)", rel, rel_ops, ping)
        row("poolkit lease acquire+release", pair, pair_ops, ping)

        def lock_pair() -> None:
            lock.acquire(blocking=False)
            lock.release()

        lk, lk_ops = timed(lock_pair, n)
        row("peer: redis-py Lock acquire+release", lk, lk_ops, ping)
        out.update(acquire=acq, release=rel, pair=pair, lock_pair=lk)
    finally:
        budget.close()
        r.delete(*r.scan_iter(match=f"{{poolkit:budget:{name}}}:*"))
        r.close()
    return out


def bench_async_round_trips(n: int) -> None:
    async def main() -> None:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        r = aioredis.Redis.from_url(URL)
        budget = AsyncRedisBudget(URL, name, 1_000_000, lease_ttl=30, restart_quiet=0)
        try:
            await budget.release(await budget.acquire(1.0))
            ping, ping_ops = await atimed(r.ping, n)
            print("asyncio (redis.asyncio), 1 task:")
            row("PING", ping, ping_ops, ping)

            async def pair() -> None:
                await budget.release(await budget.acquire(1.0))

            p, p_ops = await atimed(pair, n)
            row("poolkit lease acquire+release", p, p_ops, ping)
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
    print(f"  {'threads':<10} {'budget off':>12} {'budget on':>12} {'on/off':>8}")
    try:
        for threads in (1, 8):
            offs, ons = [], []
            for _ in range(rounds):  # interleaved, so machine noise hits both alike
                offs.append(pool_throughput(None, threads, seconds))
                ons.append(pool_throughput(budget, threads, seconds))
            off, on = max(offs), max(ons)
            print(f"  {threads:<10} {off:12.0f} {on:12.0f} {on / off:8.3f}")
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
    bench_round_trips(n)
    bench_async_round_trips(n // 2)
    bench_pool(0.5 if args.quick else 1.5, 2 if args.quick else 3)


if __name__ == "__main__":
    main()
