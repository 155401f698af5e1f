"""The asyncio pool: the same policy, plus cancellation at every await and loop ownership."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from poolkit import (
    AsyncFactory,
    AsyncPool,
    NullAsyncPool,
    PoolClosed,
    PoolEvent,
    PoolFull,
    PoolTimeout,
    ReleaseError,
    ResourceCreationError,
)

from conftest import Thing, Things


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the loop until ``predicate`` holds (each step lets the pool's tasks run)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


class AsyncThings(AsyncFactory[Thing]):
    """Async hooks around Things, with a gate to hold creations."""

    def __init__(self) -> None:
        self.things = Things()
        self.gate: asyncio.Event | None = None

    async def create(self) -> Thing:
        if self.gate is not None:
            await self.gate.wait()
        return self.things.create()

    async def destroy(self, thing: Thing) -> None:
        await asyncio.sleep(0)
        self.things.destroy(thing)

    async def reset(self, thing: Thing) -> None:
        await asyncio.sleep(0)
        thing.dirty = False


def test_borrow_reuse_and_close() -> None:
    async def main() -> None:
        factory = AsyncThings()
        async with AsyncPool(factory, max_size=2, min_size=1) as pool:
            assert pool.stats().idle == 1
            async with pool.acquire() as a:
                a.dirty = True
            async with pool.acquire() as b:
                assert b is a and not b.dirty  # reset ran
            lease = await pool.get()
            await lease.release()
            with pytest.raises(ReleaseError):
                await lease.release()
            assert "size=1/2" in repr(pool)
        assert a.closed and pool.closed

    run(main)


def test_sync_hooks_work_in_the_async_pool(things: Things) -> None:
    async def main() -> None:
        pool = AsyncPool(things.create, destroy=things.destroy, reset=things.reset)
        async with pool.acquire() as thing:
            pass
        await pool.close()
        assert thing.closed

    run(main)


def test_broken_resources_are_destroyed() -> None:
    async def main() -> None:
        factory = AsyncThings()
        pool = AsyncPool(factory, max_size=1)
        with pytest.raises(ConnectionResetError):
            async with pool.acquire() as thing:
                raise ConnectionResetError
        await until(lambda: thing.closed)
        with pytest.raises(KeyError):
            async with pool.acquire() as other:
                raise KeyError("ordinary error")
        assert not other.closed and pool.stats().closed_broken_total == 1
        await pool.close()

    run(main)


def test_timeout_carries_the_creation_error_and_max_waiting_refuses() -> None:
    async def main() -> None:
        factory = AsyncThings()
        factory.things.fail_forever = True
        pool = AsyncPool(factory, max_size=1, name="cache")
        with pytest.raises(PoolTimeout) as caught:
            await pool.get(timeout=0.1)
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
        assert "cache" in str(caught.value)
        await pool.close()

        ok = AsyncPool(AsyncThings(), max_size=1, max_waiting=1)
        lease = await ok.get()
        waiter = asyncio.create_task(ok.get(timeout=5))
        await until(lambda: ok.stats().waiting == 1)
        with pytest.raises(PoolFull):
            await ok.get(timeout=5)
        await lease.release()
        second = await waiter
        await second.release()
        await ok.close()

    run(main)


def test_priority_and_fifo_hand_over() -> None:
    async def main() -> None:
        pool = AsyncPool(AsyncThings(), max_size=1)
        lease = await pool.get()
        order: list[str] = []

        async def borrower(label: str, priority: int) -> None:
            async with pool.acquire(priority=priority):
                order.append(label)

        tasks = []
        for count, (label, priority) in enumerate(
            [("a", 0), ("b", 0), ("urgent", 5), ("c", 0)], start=1
        ):
            tasks.append(asyncio.create_task(borrower(label, priority)))
            await until(lambda count=count: pool.stats().waiting == count)
        await lease.release()
        await asyncio.gather(*tasks)
        assert order == ["urgent", "a", "b", "c"]
        await pool.close()

    run(main)


def test_cancelled_waiter_never_loses_a_slot() -> None:
    async def main() -> None:
        pool = AsyncPool(AsyncThings(), max_size=1)
        lease = await pool.get()
        waiter = asyncio.create_task(pool.get(timeout=10))
        await until(lambda: pool.stats().waiting == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.stats().waiting == 0
        await lease.release()
        assert pool.stats().idle == 1
        await pool.close()

    run(main)


def test_cancelled_at_hand_over_gives_the_resource_to_the_next() -> None:
    async def main() -> None:
        pool = AsyncPool(AsyncThings(), max_size=1)
        for _ in range(200):
            lease = await pool.get()
            first = asyncio.create_task(pool.get(timeout=10))
            second = asyncio.create_task(pool.get(timeout=10))
            await until(lambda: pool.stats().waiting == 2)
            await lease.release()  # served to `first`, which has not resumed yet
            first.cancel()
            results = await asyncio.gather(first, second, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError)
            got = results[1]
            assert not isinstance(got, BaseException)
            await got.release()
            stats = pool.stats()
            assert (stats.in_use, stats.waiting, stats.size) == (0, 0, 1)
        await pool.close()

    run(main)


def test_cancelled_while_its_resource_is_created() -> None:
    async def main() -> None:
        factory = AsyncThings()
        factory.gate = asyncio.Event()
        pool = AsyncPool(factory, max_size=1)
        task = asyncio.create_task(pool.get(timeout=10))
        await until(lambda: pool.stats().creating == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        factory.gate.set()
        await until(lambda: pool.stats().idle == 1)  # the creation finished into idle
        assert pool.stats().in_use == 0
        await pool.close()

    run(main)


def test_cancelled_while_holding_and_while_resetting() -> None:
    async def main() -> None:
        factory = AsyncThings()
        reset_started = asyncio.Event()
        never = asyncio.Event()

        async def slow_reset(thing: Thing) -> None:
            reset_started.set()
            await never.wait()

        pool = AsyncPool(factory, max_size=1, reset=slow_reset, acquire_timeout=0.2)

        async def hold_then_return() -> None:
            async with pool.acquire():
                pass

        task = asyncio.create_task(hold_then_return())
        await reset_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert stats.in_use == 0 and stats.closed_reset_total == 1  # destroyed, slot freed

        async def hold_forever() -> None:
            async with pool.acquire():
                await never.wait()

        holder = asyncio.create_task(hold_forever())
        await until(lambda: pool.stats().in_use == 1)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder  # returns at once: the reset runs in the background, bounded
        await until(lambda: pool.stats().in_use == 0)
        assert pool.stats().closed_reset_total == 2
        await pool.close(timeout=1)

    run(main)


def test_using_the_pool_from_another_loop_fails_clearly() -> None:
    pool = AsyncPool(AsyncThings(), max_size=1)

    async def borrow() -> None:
        async with pool.acquire():
            pass

    asyncio.run(borrow())
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            asyncio.run(borrow())
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors and "belongs to another event loop" in str(errors[0])


def test_close_fails_waiters_and_destroys_late_returns() -> None:
    async def main() -> None:
        factory = AsyncThings()
        pool = AsyncPool(factory, max_size=1)
        lease = await pool.get()
        waiter = asyncio.create_task(pool.get(timeout=10))
        await until(lambda: pool.stats().waiting == 1)
        closing = asyncio.create_task(pool.close(timeout=5))
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.get()
        await lease.release()
        await closing
        assert factory.things.alive == 0
        await pool.close()

    run(main)


def test_open_raises_when_nothing_can_be_made() -> None:
    async def main() -> None:
        factory = AsyncThings()
        factory.things.fail_forever = True
        pool = AsyncPool(factory, min_size=2)
        with pytest.raises(ResourceCreationError):
            await pool.open()
        await pool.close()

    run(main)


def test_garbage_collected_lease_is_reclaimed() -> None:
    async def main() -> None:
        factory = AsyncThings()
        pool = AsyncPool(factory, max_size=1)
        leaks: list[PoolEvent] = []
        pool.on("leak", leaks.append)
        lease = await pool.get()
        thing = lease.resource
        del lease
        gc.collect()
        async with pool.acquire(timeout=5) as other:
            assert other is not thing
        await until(lambda: thing.closed)
        assert len(leaks) == 1 and pool.stats().leaks_total == 1
        await pool.close()

    run(main)


def test_null_async_pool_does_not_reuse() -> None:
    async def main() -> None:
        factory = AsyncThings()
        pool = NullAsyncPool(factory, max_size=2)
        ids = []
        for _ in range(3):
            async with pool.acquire() as thing:
                ids.append(thing.id)
        assert ids == [1, 2, 3]
        await pool.close()

    run(main)


def test_async_events_and_stats_agree() -> None:
    async def main() -> None:
        pool = AsyncPool(AsyncThings(), max_size=2)
        seen: dict[str, int] = {}

        def count(event: PoolEvent) -> None:
            seen[event.kind] = seen.get(event.kind, 0) + 1

        for kind in ("create", "acquire", "release", "destroy"):
            pool.on(kind, count)
        for _ in range(5):
            async with pool.acquire():
                pass
        await pool.close()
        stats = pool.stats()
        assert seen == {"create": 1, "acquire": 5, "release": 5, "destroy": 1}
        assert stats.acquired_total == 5 and stats.destroyed_total == 1

    run(main)


def test_resize_and_close_idle() -> None:
    async def main() -> None:
        pool: AsyncPool[Any] = AsyncPool(AsyncThings(), max_size=3)
        leases = [await pool.get() for _ in range(3)]
        for lease in leases:
            await lease.release()
        assert await pool.close_idle(2) == 2
        await pool.resize(max_size=1)
        assert pool.stats().size == 1
        await pool.close()

    run(main)


def test_cancelled_during_check_destroys_the_resource() -> None:
    async def main() -> None:
        factory = AsyncThings()
        checking = asyncio.Event()
        never = asyncio.Event()

        async def slow_check(thing: Thing, info: object) -> bool:
            checking.set()
            await never.wait()
            return True

        pool = AsyncPool(factory, max_size=1, check=slow_check, check_after_idle=0)
        async with pool.acquire() as first:
            pass
        task = asyncio.create_task(pool.get(timeout=10))
        await checking.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: first.closed)  # half-checked: never handed to the next borrower
        stats = pool.stats()
        assert stats.in_use == 0 and stats.idle == 0 and stats.check_failed_total == 1
        await pool.close()

    run(main)


def test_maintenance_task_does_not_keep_a_forgotten_pool_alive() -> None:
    import weakref

    async def main() -> None:
        pool = AsyncPool(AsyncThings(), max_size=1)
        async with pool.acquire():
            pass
        maintainer = pool._maintainer
        assert maintainer is not None and not maintainer.done()
        ref = weakref.ref(pool)
        del pool
        gc.collect()
        assert ref() is None
        await asyncio.wait_for(maintainer, 10)  # it notices at its next round and stops

    run(main)
