"""AsyncRedisBudget (redis.asyncio): same scripts and keys as the sync budget."""

from __future__ import annotations

import asyncio

import pytest

import poolkit
from poolkit import PoolClosed
from poolkit.cluster import AsyncRedisBudget, BudgetExhausted, BudgetUnavailable, RedisBudget

from .conftest import SHARED_REDIS

pytestmark = pytest.mark.redis


def test_async_grants_refuses_and_wakes_on_release(budget_name) -> None:
    async def main() -> None:
        a = AsyncRedisBudget(SHARED_REDIS, budget_name, 2, lease_ttl=2.0, restart_quiet=0)
        b = AsyncRedisBudget(SHARED_REDIS, budget_name, 2, lease_ttl=2.0, restart_quiet=0)
        try:
            t1, t2 = await a.acquire(1.0), await a.acquire(1.0)
            assert t1.fence is not None and t2.fence is not None and t2.fence > t1.fence
            with pytest.raises(BudgetExhausted) as info:
                await b.acquire(0.05)
            assert info.value.holders == {a.process_id: 2}
            waiter = asyncio.create_task(b.acquire(10.0))
            await asyncio.sleep(0)
            await a.release(t1)
            t3 = await asyncio.wait_for(waiter, 15)
            assert await b.holders() == {a.process_id: 1, b.process_id: 1}
            await b.release(t3)
            await a.release(t2)
            assert await a.holders() == {}
        finally:
            await a.close()
            await b.close()
        with pytest.raises(PoolClosed):
            await a.acquire(0)

    asyncio.run(main())


def test_async_renew_task_keeps_leases_and_sync_processes_share_the_budget(budget_name) -> None:
    sync = RedisBudget(SHARED_REDIS, budget_name, 2, lease_ttl=0.4, restart_quiet=0)

    async def main() -> None:
        a = AsyncRedisBudget(SHARED_REDIS, budget_name, 2, lease_ttl=0.4, restart_quiet=0)
        try:
            await a.acquire(1.0)
            await asyncio.to_thread(sync.acquire, 1.0)
            with pytest.raises(BudgetExhausted):
                await asyncio.to_thread(sync.acquire, 1.2)  # 3 x ttl: the task renewed
            assert a.info().renewals_total >= 3
            assert a._task is not None
        finally:
            await a.close()
        assert a._task is None
        assert all(t.get_name() != f"poolkit-budget-{budget_name}" for t in asyncio.all_tasks())

    try:
        asyncio.run(main())
    finally:
        sync.close()


def test_async_strict_and_degraded_when_redis_is_down(private_redis) -> None:
    async def main() -> None:
        s = AsyncRedisBudget(private_redis.url, "s", 4, restart_quiet=0)
        d = AsyncRedisBudget(
            private_redis.url, "d", 4, mode="degraded", fallback_limit=1, restart_quiet=0
        )
        try:
            await s.acquire(1.0)
            private_redis.kill()
            with pytest.raises(BudgetUnavailable):
                await s.acquire(1.0)
            assert s.status() == "unavailable"
            t = await d.acquire(1.0)
            assert t.fence is None and d.status() == "degraded"
            with pytest.raises(BudgetUnavailable, match="fallback_limit=1"):
                await d.acquire(1.0)
            await d.release(t)  # no Redis needed for a local lease to go back
            private_redis.start()
            await s.renew()
            assert s.status() == "ok" and s.info().readded_total == 1
        finally:
            await s.close()
            await d.close()

    asyncio.run(main())


def test_async_pool_takes_leases_only_on_create(budget_name) -> None:
    from poolkit.async_pool import AsyncPool

    async def main() -> None:
        budget = AsyncRedisBudget(SHARED_REDIS, budget_name, 2, restart_quiet=0)
        made: list[int] = []

        async def create() -> int:
            made.append(len(made))
            return made[-1]

        pool = AsyncPool(create, max_size=4, acquire_timeout=0.5, budget=budget)
        try:
            l1, l2 = await pool.get(), await pool.get()
            assert budget.info().held == 2
            with pytest.raises(poolkit.PoolTimeout) as info:
                await pool.get(timeout=1.5)
            assert isinstance(info.value.__cause__, BudgetExhausted)
            await l1.release()
            for _ in range(50):  # reuse: no new lease, no new resource
                async with pool.acquire():
                    pass
            assert budget.info().grants_total == 2 and len(made) == 2
            await l2.release()
        finally:
            await pool.close()
        assert budget.info().held == 0  # destroyed resources gave their leases back
        assert await budget.holders() == {}
        await budget.close()

    asyncio.run(main())
