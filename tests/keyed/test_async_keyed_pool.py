"""AsyncKeyedPool: the asyncio twin (per-key sub-pools, global cap, eviction, fairness, stress)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from poolkit import PoolClosed, PoolTimeout
from poolkit.async_keyed import AsyncKeyedFactory, AsyncKeyedPool


class Res:
    def __init__(self, key: object, n: int) -> None:
        self.key = key
        self.n = n
        self.closed = False


class Tracker:
    def __init__(self) -> None:
        self.live: Counter[object] = Counter()
        self.total = 0
        self.max_total = 0
        self.max_per_key = 0
        self.n = 0

    async def create(self, key: object) -> Res:
        await asyncio.sleep(0)
        self.n += 1
        self.live[key] += 1
        self.total += 1
        self.max_total = max(self.max_total, self.total)
        self.max_per_key = max(self.max_per_key, self.live[key])
        return Res(key, self.n)

    async def destroy(self, r: Res) -> None:
        assert not r.closed
        r.closed = True
        self.live[r.key] -= 1
        self.total -= 1


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def make(t: Tracker, **kw: Any) -> AsyncKeyedPool[str, Res]:
    kw.setdefault("acquire_timeout", 5.0)
    return AsyncKeyedPool(t.create, destroy=t.destroy, **kw)


def test_basic_per_key_and_close() -> None:
    t = Tracker()

    async def main() -> None:
        async with make(t, max_per_key=2, name="apool") as pool:
            async with pool.acquire("a") as ra:
                assert ra.key == "a"
            lease = await pool.get("a")
            assert lease.resource is ra
            await lease.release()
            async with pool.acquire("b") as rb:
                assert rb.key == "b"
            s = pool.stats()
            assert s.keys == 2 and s.size == 2 and s.idle == 2 and s.acquired_total == 3
            assert "apool" in repr(pool)
        assert pool.closed
        with pytest.raises(PoolClosed):
            await pool.get("a")

    run(main())
    assert t.total == 0


def test_global_cap_evicts_lru_idle_of_other_key() -> None:
    t = Tracker()

    async def main() -> None:
        async with make(t, max_per_key=3, max_total=2) as pool:
            async with pool.acquire("a") as ra:
                pass
            async with pool.acquire("b"):
                pass
            async with pool.acquire("c", timeout=2.0) as rc:
                assert rc.key == "c"
            assert ra.closed
            assert pool.stats().evictions_total == 1
            for i in range(20):  # every key holds an idle resource: still no deadlock
                async with pool.acquire(f"k{i}", timeout=2.0):
                    pass
            assert pool.stats().size <= 2

    run(main())
    assert t.max_total == 2


def test_budget_timeout_names_the_cap_and_fifo_across_keys() -> None:
    t = Tracker()
    served: list[str] = []

    async def main() -> None:
        async with make(t, max_per_key=1, max_total=1) as pool:
            holder = await pool.get("a")
            with pytest.raises(PoolTimeout, match=r"max_total \(1\)"):
                await pool.get("z", timeout=0.1)

            async def borrow(key: str) -> None:
                async with pool.acquire(key, timeout=10.0):
                    served.append(key)
                    await asyncio.sleep(0)

            tasks = []
            for key in ("b", "c", "d"):
                tasks.append(asyncio.create_task(borrow(key)))
                for _ in range(200):  # let this borrower queue up for a permit
                    if pool.stats().budget_waiting >= len(tasks):
                        break
                    await asyncio.sleep(0.005)
            assert pool.stats().budget_waiting == 3
            await holder.release()
            await asyncio.gather(*tasks)

    run(main())
    assert served == ["b", "c", "d"]
    assert t.max_total == 1


def test_sweep_and_discard() -> None:
    t = Tracker()

    async def main() -> None:
        async with make(t, max_per_key=2, idle_timeout=30.0) as pool:
            async with pool.acquire("a"):
                pass
            await pool.close_idle("a")
            now = 1000.0
            assert await pool.sweep(now) == 0
            assert await pool.sweep(now + 31) == 1
            assert pool.keys() == []
            async with pool.acquire("b"):
                pass
            assert await pool.discard("b")
            assert not await pool.discard("b")
            async with pool.acquire("b") as rb:
                assert rb.key == "b"

    run(main())
    assert t.total == 0


def test_async_keyed_factory_with_sync_and_async_hooks() -> None:
    calls: list[str] = []

    class Conns(AsyncKeyedFactory[str, Res]):
        async def create(self, key: str) -> Res:
            calls.append(f"create {key}")
            return Res(key, 0)

        async def destroy(self, resource: Res) -> None:
            calls.append(f"destroy {resource.key}")

    async def main() -> None:
        async with AsyncKeyedPool(Conns(), max_per_key=1) as pool:
            async with pool.acquire("x"):
                pass

    run(main())
    assert calls == ["create x", "destroy x"]


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match=r"max_per_key \(0\) must be >= 1"):
        AsyncKeyedPool(Tracker().create, max_per_key=0)
    with pytest.raises(TypeError, match="does not take max_size="):
        AsyncKeyedPool(Tracker().create, max_size=2)


def test_task_stress_caps_hold_and_everyone_is_served() -> None:
    t = Tracker()
    keys = [f"k{i}" for i in range(10)]
    done = 0

    async def main() -> None:
        nonlocal done
        async with make(t, max_per_key=3, max_total=6, acquire_timeout=20.0) as pool:

            async def worker(seed: int) -> None:
                nonlocal done
                rng = random.Random(seed)
                for _ in range(100):
                    key = rng.choice(keys)
                    async with pool.acquire(key) as r:
                        assert r.key == key and not r.closed
                        if rng.random() < 0.3:
                            await asyncio.sleep(0)
                    done += 1

            await asyncio.gather(*(worker(i) for i in range(32)))
            s = pool.stats()
            assert s.size <= 6 and s.in_use == 0 and s.budget_waiting == 0

    run(main())
    assert done == 3200
    assert t.max_total <= 6 and t.max_per_key <= 3
    assert t.total == 0


def test_busy_key_cannot_starve_another_key() -> None:
    t = Tracker()

    async def main() -> None:
        async with make(t, max_per_key=2, max_total=2, acquire_timeout=10.0) as pool:
            a_served = asyncio.Event()

            async def hammer_b() -> None:
                for _ in range(20000):
                    if a_served.is_set():
                        return
                    async with pool.acquire("b"):
                        await asyncio.sleep(0.001)

            tasks = [asyncio.create_task(hammer_b()) for _ in range(4)]
            for _ in range(1000):
                s = pool.stats().per_key.get("b")
                if s is not None and s.size == 2 and s.waiting > 0:
                    break
                await asyncio.sleep(0.005)
            async with pool.acquire("a", timeout=10.0) as ra:
                assert ra.key == "a"
            a_served.set()
            await asyncio.gather(*tasks)

    run(main())
    assert t.max_total <= 2


def test_resize_at_run_time() -> None:
    t = Tracker()

    async def main() -> None:
        async with make(t, max_per_key=2, max_total=4) as pool:
            for key in "abcd":
                async with pool.acquire(key):
                    pass
            await pool.resize(max_total=2, max_per_key=1)
            for _ in range(100):  # destroys run as tasks
                if t.total == 2:
                    break
                await asyncio.sleep(0.005)
            s = pool.stats()
            assert t.total == 2 and s.max_total == 2 and s.permits_in_use == 2
            async with pool.acquire("e", timeout=2.0):
                assert pool.stats().size <= 2

    run(main())
