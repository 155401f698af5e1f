"""amap: ordered results, the concurrency bound, errors and cancellation with a real AsyncPool."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from poolkit.async_pool import AsyncPool
from poolkit.workers import amap

T = TypeVar("T")
WAIT = 30.0


class Conn:
    ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.busy = False


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(main(), WAIT)

    return asyncio.run(guarded())


class Tracker:
    """Counts tasks holding a resource, and checks nobody shares one."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.errors: list[str] = []

    async def enter(self, conn: Conn) -> None:
        if conn.busy:
            self.errors.append(f"conn {conn.id} lent twice")
        conn.busy = True
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0)

    def leave(self, conn: Conn) -> None:
        conn.busy = False
        self.active -= 1


def test_results_in_input_order_when_finishing_out_of_order() -> None:
    async def main() -> list[int]:
        last = asyncio.Event()

        async def fn(conn: Conn, i: int) -> int:
            if i == 0:
                await last.wait()
            if i == 3:
                last.set()
            return i * 2

        async with AsyncPool(Conn, max_size=4) as pool:
            return await amap(pool, fn, range(6), concurrency=4)

    assert run(main) == [0, 2, 4, 6, 8, 10]


def test_at_most_concurrency_tasks_hold_a_resource() -> None:
    tracker = Tracker()

    async def fn(conn: Conn, i: int) -> int:
        await tracker.enter(conn)
        for _ in range(i % 4):
            await asyncio.sleep(0)
        tracker.leave(conn)
        return i

    async def main() -> tuple[list[int], int, int]:
        async with AsyncPool(Conn, max_size=10) as pool:
            out = [x async for x in amap(pool, fn, range(100), concurrency=3)]
            s = pool.stats()
            return out, s.in_use, s.size

    out, in_use, size = run(main)
    assert out == list(range(100))
    assert tracker.errors == []
    assert tracker.peak == 3
    assert in_use == 0
    assert size <= 3


def test_async_iterable_items_and_lookahead_bound() -> None:
    pulled = 0
    release = asyncio.Event

    async def main() -> list[int]:
        nonlocal pulled
        gate = release()

        async def items() -> AsyncIterator[int]:
            nonlocal pulled
            for i in range(50):
                pulled += 1
                yield i

        async def fn(conn: Conn, i: int) -> int:
            if i == 0:
                await gate.wait()
            return i

        async with AsyncPool(Conn, max_size=5) as pool:
            results = amap(pool, fn, items(), concurrency=2)
            first = asyncio.ensure_future(results.__anext__())
            for _ in range(50):
                await asyncio.sleep(0)
            assert pulled <= 4  # head stuck: at most 2 * concurrency items in flight
            gate.set()
            out = [await first]
            out += [x async for x in results]
            return out

    assert run(main) == list(range(50))
    assert pulled == 50


def test_first_error_cancels_the_rest_and_returns_every_resource() -> None:
    cancelled: list[int] = []

    async def fn(conn: Conn, i: int) -> int:
        if i == 2:
            raise ValueError(f"item {i} is bad")
        try:
            await asyncio.Event().wait()  # never finishes on its own
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main() -> Any:
        async with AsyncPool(Conn, max_size=4) as pool:
            with pytest.raises(ValueError, match="item 2 is bad"):
                await amap(pool, fn, range(10), concurrency=4)
            return pool.stats()

    s = run(main)
    assert s.in_use == 0
    assert sorted(cancelled) == [0, 1, 3]


def test_cancelling_the_consumer_returns_every_resource() -> None:
    started = 0

    async def fn(conn: Conn, i: int) -> int:
        nonlocal started
        started += 1
        await asyncio.Event().wait()
        return i

    async def main() -> Any:
        async with AsyncPool(Conn, max_size=8) as pool:
            consumer = asyncio.ensure_future(amap(pool, fn, range(100), concurrency=5))
            while started < 5:
                await asyncio.sleep(0)
            assert pool.stats().in_use == 5
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
            return pool.stats()

    s = run(main)
    assert started == 5
    assert s.in_use == 0


def test_breaking_out_of_async_with_cancels_running_tasks() -> None:
    async def fn(conn: Conn, i: int) -> int:
        if i >= 2:
            await asyncio.Event().wait()
        return i

    async def main() -> Any:
        async with AsyncPool(Conn, max_size=8) as pool:
            got = []
            async with amap(pool, fn, range(100), concurrency=4) as results:
                async for x in results:
                    got.append(x)
                    if x == 1:
                        break
            assert got == [0, 1]
            return pool.stats()

    assert run(main).in_use == 0


def test_resource_broken_by_the_task_is_discarded() -> None:
    async def fn(conn: Conn, i: int) -> int:
        raise ConnectionResetError("gone")

    async def main() -> Any:
        async with AsyncPool(Conn, max_size=2) as pool:
            with pytest.raises(ConnectionResetError):
                await amap(pool, fn, [1], concurrency=1)
            return pool.stats()

    s = run(main)
    assert s.closed_broken_total == 1
    assert s.in_use == 0


def test_empty_input_and_bad_concurrency() -> None:
    async def fn(conn: Conn, i: int) -> int:
        return i

    async def main() -> list[int]:
        async with AsyncPool(Conn, max_size=2) as pool:
            empty: Iterator[int] = iter(())
            return await amap(pool, fn, empty, concurrency=2)

    assert run(main) == []
    with pytest.raises(ValueError, match=r"concurrency \(0\) must be an int >= 1"):
        amap(None, fn, [], concurrency=0)  # type: ignore[arg-type]
