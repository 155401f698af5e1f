"""Random actions over many threads and tasks; afterwards the invariants must hold."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

from poolkit import AsyncPool, Pool, PoolTimeout


class Resource:
    """Knows how many borrowers hold it right now: more than one is a double lending."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.holders = 0
        self.closed = False


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created: list[Resource] = []
        self.destroyed: list[Resource] = []
        self.double_lent = 0

    def create(self) -> Resource:
        with self.lock:
            resource = Resource(len(self.created) + 1)
            if random.random() < 0.05:
                raise ConnectionRefusedError("flaky server")
            self.created.append(resource)
            return resource

    def destroy(self, resource: Resource) -> None:
        with self.lock:
            assert not resource.closed
            resource.closed = True
            self.destroyed.append(resource)

    def enter(self, resource: Resource) -> None:
        with self.lock:
            resource.holders += 1
            if resource.holders > 1 or resource.closed:
                self.double_lent += 1

    def leave(self, resource: Resource) -> None:
        with self.lock:
            resource.holders -= 1


def test_64_threads_on_8_resources_with_faults_and_timeouts() -> None:
    ledger = Ledger()
    pool = Pool(
        ledger.create,
        destroy=ledger.destroy,
        max_size=8,
        min_size=2,
        max_uses=50,
        acquire_timeout=0.5,
        name="stress",
    )
    outcomes: Counter[str] = Counter()
    outcomes_lock = threading.Lock()
    start = threading.Barrier(64)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(300):
            roll = rng.random()
            try:
                with pool.acquire(
                    timeout=rng.choice([0.0, 0.01, 0.5]), priority=rng.randint(0, 2)
                ) as r:
                    ledger.enter(r)
                    try:
                        if roll < 0.05:
                            raise ConnectionResetError("broken")
                        if roll < 0.10:
                            raise KeyError("ordinary error")
                        if roll < 0.5:
                            threading.Event().wait(0)  # let other threads run while holding
                    finally:
                        ledger.leave(r)
                result = "ok"
            except PoolTimeout:
                result = "timeout"
            except (ConnectionResetError, KeyError):
                result = "error"
            with outcomes_lock:
                outcomes[result] += 1

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = pool.stats()
    assert ledger.double_lent == 0
    assert sum(outcomes.values()) == 64 * 300 and outcomes["ok"] > 0
    assert stats.in_use == 0 and stats.waiting == 0
    assert stats.size <= 8
    assert stats.created_total - stats.destroyed_total == stats.size
    assert stats.created_total == len(ledger.created)
    assert stats.timeouts_total == outcomes["timeout"]
    pool.close()
    assert len(ledger.destroyed) == len(ledger.created)
    assert all(r.holders == 0 for r in ledger.created)


def test_asyncio_tasks_with_random_cancellations() -> None:
    async def main() -> None:
        ledger = Ledger()

        async def create() -> Resource:
            await asyncio.sleep(random.random() / 1000)
            return ledger.create()

        async def reset(resource: Resource) -> None:
            await asyncio.sleep(0)

        pool = AsyncPool(
            create, destroy=ledger.destroy, reset=reset, max_size=8, acquire_timeout=0.2
        )

        async def worker(rng: random.Random) -> None:
            for _ in range(100):
                try:
                    async with pool.acquire(timeout=rng.choice([0.001, 0.05, 0.2])) as r:
                        ledger.enter(r)
                        try:
                            await asyncio.sleep(rng.random() / 2000)
                            if rng.random() < 0.05:
                                raise ConnectionResetError
                        finally:
                            ledger.leave(r)
                except (PoolTimeout, ConnectionResetError):
                    pass

        rng = random.Random(42)
        tasks = [asyncio.create_task(worker(random.Random(i))) for i in range(64)]
        for _ in range(200):  # cancel random tasks at random moments
            await asyncio.sleep(rng.random() / 500)
            victim = rng.choice(tasks)
            victim.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(20):  # let background resets and destroys finish
            await asyncio.sleep(0)
        stats = pool.stats()
        assert ledger.double_lent == 0
        assert stats.in_use == 0 and stats.waiting == 0 and stats.size <= 8
        assert stats.created_total - stats.destroyed_total == stats.size
        await pool.close()
        assert len(ledger.destroyed) == len(ledger.created)

    asyncio.run(main())
