"""Benchmark ObjectPool, BufferPool, WorkerPool and amap against doing without a pool.

Run: .venv/bin/python benchmarks/bench_memory.py [--quick]

Each line prints time per operation for the pooled way and the plain way, and the ratio
plain/pooled (> 1 means pooling wins). All numbers in one table come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import re
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from poolkit import Pool
from poolkit.async_pool import AsyncPool
from poolkit.buffers import BufferPool, to_arrow
from poolkit.objects import ObjectPool
from poolkit.workers import WorkerPool, amap

KiB = 1024
MiB = 1024 * KiB

rows: list[tuple[str, str, float, str, float]] = []


def per_op(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best-of-``repeat`` seconds per call of ``fn`` over ``n`` calls (GC on, as in real use)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def compare(
    section: str,
    name_a: str,
    fn_a: Callable[[], object],
    name_b: str,
    fn_b: Callable[[], object],
    n: int,
    repeat: int,
    ops_per_call: int = 1,
) -> None:
    """Time ``fn_a`` (pooled) and ``fn_b`` (baseline) alternately; record the best of each.

    Alternating keeps both sides under the same background load on a shared machine.
    """
    best_a = best_b = float("inf")
    for _ in range(repeat):
        best_a = min(best_a, per_op(fn_a, n, 1))
        best_b = min(best_b, per_op(fn_b, n, 1))
    record(section, name_a, best_a / ops_per_call, name_b, best_b / ops_per_call)


def batch(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs of a whole batch ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def record(section: str, name_a: str, a: float, name_b: str, b: float) -> None:
    rows.append((section, name_a, a, name_b, b))
    ratio = b / a if a else float("nan")
    print(f"{section:<34} {name_a:<26} {fmt(a):>10}   {name_b:<30} {fmt(b):>10}   x{ratio:5.2f}")


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e3:.2f} ms"


# -- ObjectPool -------------------------------------------------------------------------------


class Response:
    """A cheap object (seed 002's HTTPResponse): headers dict, body buffer, status."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = io.BytesIO()
        self.status = 0

    def reset(self) -> None:
        self.headers.clear()
        self.body.seek(0)
        self.body.truncate()
        self.status = 0


def use_response(r: Response) -> None:
    r.status = 200
    r.headers["content-type"] = "application/json"
    r.body.write(b'{"ok": true}')


PATTERNS = [rf"(?P<k{i}>field{i})\s*[:=]\s*(?P<v{i}>[\w.-]+)" for i in range(40)]


class RegexSet:
    """An expensive object: 40 patterns compiled into one alternation + per-field patterns."""

    def __init__(self) -> None:
        # re.compile is cached by the re module for the same pattern string; a set built from
        # configuration at run time (as here, flags vary) still pays the sre compiler each time.
        self.combined = re.compile("|".join(PATTERNS), re.IGNORECASE | re.VERBOSE)
        self.scratch: list[str] = []

    def reset(self) -> None:
        self.scratch.clear()


def use_regex(r: RegexSet) -> None:
    m = r.combined.search("x field7 = abc")
    if m:
        r.scratch.append(m.group(0))


class Scratch64K:
    """A 64 KiB scratch structure: 8192 float slots (an array) plus a small index dict."""

    __slots__ = ("index", "slots")

    def __init__(self) -> None:
        self.slots = [0.0] * 8192
        self.index: dict[str, int] = {}

    def reset(self) -> None:
        # Only what a user touched needs clearing: the index says which slots.
        for i in self.index.values():
            self.slots[i] = 0.0
        self.index.clear()


def use_scratch(s: Scratch64K) -> None:
    for i, key in enumerate(("a", "b", "c", "d")):
        s.slots[i * 100] = 1.5
        s.index[key] = i * 100


def bench_objects(n: int, repeat: int) -> None:
    re.purge()
    for label, make, reset, use in (
        ("ObjectPool: cheap Response", Response, Response.reset, use_response),
        ("ObjectPool: 40-regex set", RegexSet, RegexSet.reset, use_regex),
        ("ObjectPool: 64 KiB scratch", Scratch64K, Scratch64K.reset, use_scratch),
    ):
        pool: ObjectPool[Any] = ObjectPool(make, reset=reset, max_idle=8)
        m = n if make is not RegexSet else max(n // 20, 50)

        def pooled(pool: ObjectPool[Any] = pool, use: Callable[[Any], None] = use) -> None:
            obj = pool.get()
            use(obj)
            pool.put(obj)

        def borrowed(pool: ObjectPool[Any] = pool, use: Callable[[Any], None] = use) -> None:
            with pool.borrow() as obj:
                use(obj)

        def plain(make: Callable[[], Any] = make, use: Callable[[Any], None] = use) -> None:
            use(make())

        if make is RegexSet:
            # Without the purge the re module's own cache makes "compile" a dict lookup.
            def plain_uncached(make: Callable[[], Any] = make) -> None:
                re.purge()
                use_regex(make())

            compare(
                label, "get/put", pooled, "new each time (re cache cold)", plain_uncached, m, repeat
            )
        compare(label, "get/put", pooled, "new each time", plain, m, repeat)
        compare(label, "with borrow()", borrowed, "new each time", plain, m, repeat)
        assert pool.stats().hit_rate > 0.99


def bench_objects_threads(n: int, repeat: int) -> None:
    """8 threads sharing one pool: the lock is the only shared state."""
    pool: ObjectPool[Scratch64K] = ObjectPool(Scratch64K, reset=Scratch64K.reset, max_idle=16)
    per_thread = max(n // 8, 100)

    def run(fn: Callable[[], None]) -> None:
        threads = [
            threading.Thread(target=lambda: [fn() for _ in range(per_thread)]) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def pooled() -> None:
        with pool.borrow() as s:
            use_scratch(s)

    def plain() -> None:
        use_scratch(Scratch64K())

    compare(
        "ObjectPool: 64 KiB scratch, 8 thr",
        "with borrow()",
        lambda: run(pooled),
        "new each time",
        lambda: run(plain),
        1,
        repeat,
        8 * per_thread,
    )


# -- BufferPool -------------------------------------------------------------------------------


def bench_buffers(n: int, repeat: int, tmp: Path, quick: bool) -> None:
    for size in (4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB):
        if size > 1 * MiB and quick:
            continue
        path = tmp / f"blob{size}"
        path.write_bytes(os.urandom(size))
        iters = max(n // (1 + size // (16 * KiB)), 200)
        with path.open("rb", buffering=0) as f:

            def plain(f: Any = f, size: int = size) -> None:
                buf = bytearray(size)
                f.seek(0)
                f.readinto(buf)

            # Classes above 16 MiB need explicit sizes and bounds (the defaults stop there).
            sizes = None if size <= 16 * MiB else [size]
            bound = max(64 * MiB, 2 * size)
            clear_pool = BufferPool(sizes, max_bytes=bound, max_class_bytes=bound)
            dirty_pool = BufferPool(
                sizes, max_bytes=bound, max_class_bytes=bound, clear_on_put=False
            )

            def pooled(f: Any = f, size: int = size, pool: BufferPool = clear_pool) -> None:
                view = pool.get(size)
                f.seek(0)
                f.readinto(view)
                pool.put(view)

            def pooled_dirty(f: Any = f, size: int = size, pool: BufferPool = dirty_pool) -> None:
                view = pool.get(size)
                f.seek(0)
                f.readinto(view)
                pool.put(view)

            iters = max(iters, 10) if size <= MiB else 8
            label = f"BufferPool: {size // KiB} KiB file.readinto"
            compare(label, "pool, clear_on_put=True", pooled, "bytearray(n)", plain, iters, repeat)
            compare(
                label,
                "pool, clear_on_put=False",
                pooled_dirty,
                "bytearray(n)",
                plain,
                iters,
                repeat,
            )
            assert clear_pool.stats().hit_rate > 0.9

    # Bytes only: the raw cost of the pool against the allocator, no I/O.
    for size in (4 * KiB, 64 * KiB, 1 * MiB):
        iters = max(n // (1 + size // (16 * KiB)), 200)
        pool = BufferPool()

        def touch_plain(size: int = size) -> None:
            buf = bytearray(size)
            buf[-1] = 1

        def touch_pooled(size: int = size, pool: BufferPool = pool) -> None:
            view = pool.get(size)
            view[-1] = 1
            pool.put(view)

        compare(
            f"BufferPool: {size // KiB} KiB get/put only",
            "pool, clear_on_put=True",
            touch_pooled,
            "bytearray(n)",
            touch_plain,
            iters,
            repeat,
        )


def bench_socket(n: int, repeat: int) -> None:
    import socket

    size = 64 * KiB
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 * MiB)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 * MiB)
    payload = os.urandom(size)
    pool = BufferPool()
    try:

        def plain() -> None:
            a.sendall(payload)
            buf = bytearray(size)
            got = 0
            while got < size:
                got += b.recv_into(memoryview(buf)[got:])

        def pooled() -> None:
            a.sendall(payload)
            view = pool.get(size)
            got = 0
            while got < size:
                got += b.recv_into(view[got:])
            pool.put(view)

        iters = max(n // 20, 200)
        compare(
            "BufferPool: 64 KiB socket.recv_into",
            "pool, clear_on_put=True",
            pooled,
            "bytearray(n)",
            plain,
            iters,
            repeat,
        )
    finally:
        a.close()
        b.close()


# -- Arrow ------------------------------------------------------------------------------------


def bench_arrow(n: int, repeat: int, tmp: Path) -> None:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        print("pyarrow not installed: arrow benchmarks skipped")
        return
    schema = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("name", pa.string())])
    rows_per_batch = 4096

    # 1. IPC decode from a file: f.read() (new bytes) vs readinto a pooled buffer + py_buffer.
    batch_ = pa.record_batch(
        [
            pa.array(range(65536), pa.int64()),
            pa.array([i * 0.5 for i in range(65536)], pa.float64()),
            pa.array([f"name-{i}" for i in range(65536)], pa.string()),
        ],
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch_)
    data = sink.getvalue().to_pybytes()
    path = tmp / "batch.arrows"
    path.write_bytes(data)
    size = len(data)
    pool = BufferPool()
    dirty = BufferPool(clear_on_put=False)
    iters = max(n // 100, 100)
    with path.open("rb", buffering=0) as f:

        def plain() -> None:
            f.seek(0)
            raw = f.read(size)
            table = pa.ipc.open_stream(raw).read_all()
            assert table.num_rows == 65536

        def pooled() -> None:
            f.seek(0)
            view = pool.get(size)
            f.readinto(view)
            table = pa.ipc.open_stream(to_arrow(view)).read_all()
            assert table.num_rows == 65536
            del table
            pool.put(view)

        def pooled_dirty() -> None:
            f.seek(0)
            view = dirty.get(size)
            f.readinto(view)
            table = pa.ipc.open_stream(to_arrow(view)).read_all()
            assert table.num_rows == 65536
            del table
            dirty.put(view)

        label = f"Arrow: IPC decode {size // KiB} KiB"
        compare(
            label, "pooled, clear_on_put=True", pooled, "f.read() -> bytes", plain, iters, repeat
        )
        compare(
            label,
            "pooled, clear_on_put=False",
            pooled_dirty,
            "f.read() -> bytes",
            plain,
            iters,
            repeat,
        )
    assert pool.stats().reuses > 0, pool.stats()

    # 2. "Record-batch builder pool": the only reusable builder state pyarrow's Python API
    # exposes is the staging columns; pyarrow's own memory pool already recycles the output.
    ids = list(range(rows_per_batch))
    scores = [i * 0.25 for i in ids]
    names = [f"n{i}" for i in ids]

    class Builder:
        def __init__(self) -> None:
            self.cols: list[list[Any]] = [[], [], []]

        def reset(self) -> None:
            for c in self.cols:
                c.clear()

    builders: ObjectPool[Builder] = ObjectPool(Builder, reset=Builder.reset)

    def build_plain() -> None:
        cols: list[list[Any]] = [[], [], []]
        cols[0].extend(ids)
        cols[1].extend(scores)
        cols[2].extend(names)
        pa.RecordBatch.from_arrays(
            [pa.array(c, t) for c, t in zip(cols, schema.types, strict=True)], schema=schema
        )

    def build_pooled() -> None:
        with builders.borrow() as b:
            b.cols[0].extend(ids)
            b.cols[1].extend(scores)
            b.cols[2].extend(names)
            pa.RecordBatch.from_arrays(
                [pa.array(c, t) for c, t in zip(b.cols, schema.types, strict=True)], schema=schema
            )

    iters = max(n // 200, 50)
    compare(
        "Arrow: build 4096-row batch",
        "pooled builder (ObjectPool)",
        build_pooled,
        "fresh lists",
        build_plain,
        iters,
        repeat,
    )


# -- WorkerPool -------------------------------------------------------------------------------


def bench_workers(tasks: int, repeat: int, tmp: Path) -> None:
    db = tmp / "bench.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table if not exists t (id integer primary key, v text)")
        conn.executemany(
            "insert or replace into t values (?, ?)", [(i, f"v{i}") for i in range(1000)]
        )
    conn.close()
    query = "select v from t where id = ?"
    workers = 4

    def task_fresh(i: int) -> str:
        c = sqlite3.connect(db)
        try:
            return str(c.execute(query, (i % 1000,)).fetchone()[0])
        finally:
            c.close()

    def task_pooled(c: sqlite3.Connection, i: int) -> str:
        return str(c.execute(query, (i % 1000,)).fetchone()[0])

    local = threading.local()
    opened: list[sqlite3.Connection] = []
    opened_lock = threading.Lock()

    def task_local(i: int) -> str:
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(db, check_same_thread=False)
            with opened_lock:
                opened.append(c)
        return str(c.execute(query, (i % 1000,)).fetchone()[0])

    with (
        Pool(
            lambda: sqlite3.connect(db, check_same_thread=False),
            destroy=sqlite3.Connection.close,
            max_size=workers,
        ) as pool,
        WorkerPool(pool, max_workers=workers) as wp,
        ThreadPoolExecutor(workers) as tpe,
    ):
        expected = [f"v{i % 1000}" for i in range(tasks)]

        def run_pooled() -> None:
            assert list(wp.map(task_pooled, range(tasks))) == expected

        def run_fresh() -> None:
            assert list(tpe.map(task_fresh, range(tasks))) == expected

        def run_local() -> None:
            assert list(tpe.map(task_local, range(tasks))) == expected

        label = f"WorkerPool: SQLite query, {workers} thr"
        compare(
            label,
            "WorkerPool + Pool",
            run_pooled,
            "TPE, connect per task",
            run_fresh,
            1,
            repeat,
            tasks,
        )
        compare(
            label,
            "WorkerPool + Pool",
            run_pooled,
            "TPE, thread-local conn",
            run_local,
            1,
            repeat,
            tasks,
        )
    for c in opened:
        c.close()


def bench_amap(tasks: int, repeat: int) -> None:
    async def fn(conn: object, i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def main() -> tuple[float, float]:
        async with AsyncPool(object, max_size=8) as pool:
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> int:
                async with sem, pool.acquire() as conn:
                    return await fn(conn, i)

            async def with_amap() -> None:
                assert await amap(pool, fn, range(tasks), concurrency=8) == list(range(tasks))

            async def with_gather() -> None:
                assert await asyncio.gather(*(one(i) for i in range(tasks))) == list(range(tasks))

            t_amap = []
            t_gather = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                await with_amap()
                t_amap.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await with_gather()
                t_gather.append(time.perf_counter() - t0)
            return statistics.median(t_amap) / tasks, statistics.median(t_gather) / tasks

    a, g = asyncio.run(main())
    record("amap: 8 at a time, trivial task", "amap (ordered, bounded)", a, "gather + Semaphore", g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()
    n, repeat, tasks = (2000, 3, 400) if args.quick else (20000, 5, 4000)
    print(
        f"{'benchmark':<34} {'pooled':<26} {'time/op':>10}   {'baseline':<30} {'time/op':>10}"
        "   baseline/pooled (>1 = pool wins)"
    )
    gc.collect()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_objects(n, repeat)
        bench_objects_threads(n, repeat)
        bench_buffers(n, repeat, tmp, args.quick)
        bench_socket(n, repeat)
        bench_arrow(n, repeat, tmp)
        bench_workers(tasks, repeat, tmp)
        bench_amap(tasks, repeat)
    if args.markdown:
        print("\n| benchmark | pooled | time/op | baseline | time/op | baseline/pooled |")
        print("|---|---|---:|---|---:|---:|")
        for section, name_a, a, name_b, b in rows:
            print(f"| {section} | {name_a} | {fmt(a)} | {name_b} | {fmt(b)} | **x{b / a:.2f}** |")


if __name__ == "__main__":
    main()
