"""AsyncEndpointPool over in-process fake servers: balancing, ejection, probes, membership."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from poolkit import PoolTimeout, ReleaseError
from poolkit.async_endpoints import AsyncEndpointPool
from poolkit.endpoints import Endpoint


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Conn:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.closed = False


class Server:
    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.connects = 0


async def connect(server: Server) -> Conn:
    await asyncio.sleep(0)
    server.connects += 1
    if not server.up:
        raise ConnectionRefusedError(f"{server.name} refused")
    return Conn(server)


async def close(conn: Conn) -> None:
    conn.closed = True


def make(
    servers: list[Server], clock: Clock | None = None, **kw: Any
) -> AsyncEndpointPool[Server, Conn]:
    kw.setdefault("acquire_timeout", 5.0)
    kw.setdefault("failure_threshold", 2)
    return AsyncEndpointPool(
        connect, [Endpoint(s, name=s.name) for s in servers], destroy=close, clock=clock, **kw
    )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_round_robin_and_stats() -> None:
    async def main() -> None:
        async with make([Server("a"), Server("b")], name="apool") as pool:
            leases = [await pool.get() for _ in range(4)]
            assert [lease.endpoint.name for lease in leases] == ["a", "b", "a", "b"]
            assert pool.stats().in_use == 4
            for lease in leases:
                await lease.release()
            s = pool.stats()
            assert s.in_use == 0 and s.idle == 4 and s.acquired_total == 4
            assert "a:healthy" in repr(pool)

    run(main())


def test_ejection_failover_probe_and_rejoin() -> None:
    clock = Clock()
    a, b = Server("a"), Server("b")

    async def main() -> None:
        async with make([a, b], clock, base_backoff=2.0) as pool:
            b.up = False
            for _ in range(10):
                async with pool.acquire() as conn:
                    assert conn.server is a
            eb = pool.stats().endpoints[1]
            assert eb.state == "ejected" and eb.ejections_total == 1
            assert eb.last_error == "ConnectionRefusedError: b refused"
            before = b.connects
            for _ in range(5):
                async with pool.acquire():
                    pass
            assert b.connects == before
            clock.now += 2.0
            assert await pool.probe() == []
            assert pool.stats().endpoints[1].ejected_for_s == 4.0
            b.up = True
            clock.now += 4.0
            async with pool.acquire():  # starts the probe as a task
                pass
            for _ in range(200):
                if pool.stats().endpoints[1].state == "healthy":
                    break
                await asyncio.sleep(0.005)
            assert pool.stats().endpoints[1].state == "healthy"
            names = Counter([(await pool.get()).endpoint.name for _ in range(4)])
            assert names == {"a": 2, "b": 2}

    run(main())


def test_all_down_fails_fast() -> None:
    clock = Clock()
    servers = [Server("a"), Server("b")]
    for s in servers:
        s.up = False

    async def main() -> None:
        async with make(servers, clock, failure_threshold=1) as pool:
            with pytest.raises(PoolTimeout, match="no endpoint is available") as info:
                for _ in range(5):
                    await pool.get()
            assert "a (ejected, next probe in 1.0s): ConnectionRefusedError" in str(info.value)

    run(main())


def test_remove_and_add_at_run_time() -> None:
    a, b = Server("a"), Server("b")

    async def main() -> None:
        async with make([a, b]) as pool:
            leases = [await pool.get() for _ in range(2)]
            await pool.remove_endpoint("b", wait=False)
            assert [e.name for e in pool.endpoints()] == ["a"]
            assert {(await pool.get()).endpoint.name for _ in range(3)} == {"a"}
            on_b = next(lease for lease in leases if lease.endpoint.name == "b")
            assert not on_b.resource.closed
            for lease in leases:
                await lease.release()
            for _ in range(100):
                if on_b.resource.closed:
                    break
                await asyncio.sleep(0.005)
            assert on_b.resource.closed
            with pytest.raises(KeyError):
                await pool.remove_endpoint("b")
            pool.add_endpoint(Endpoint(b, name="b"))
            assert len(pool.endpoints()) == 2

    run(main())


def test_task_stress_with_flapping_endpoint() -> None:
    clock = Clock()
    servers = [Server(f"s{i}") for i in range(3)]
    served = Counter[str]()

    async def main() -> None:
        async with make(
            servers, clock, strategy="random_two_choices", max_per_endpoint=3, base_backoff=0.5
        ) as pool:

            async def worker(n: int) -> None:
                for i in range(60):
                    if n == 0 and i % 10 == 0:
                        servers[1].up = not servers[1].up
                        clock.now += 1.0
                    async with pool.acquire() as conn:
                        assert not conn.closed
                        served[conn.server.name] += 1
                        await asyncio.sleep(0)

            await asyncio.gather(*(worker(n) for n in range(24)))
            s = pool.stats()
            assert s.in_use == 0 and all(e.size <= 3 for e in s.endpoints)

    run(main())
    assert sum(served.values()) == 24 * 60


def test_releasing_a_lease_twice_counts_its_end_once() -> None:
    async def main() -> None:
        async with make([Server("a")]) as pool:
            held = await pool.get()
            lease = await pool.get()
            with pytest.raises(ReleaseError):
                async with lease:
                    await lease.release()  # released early: the exit raises
            with pytest.raises(ReleaseError):
                await lease.discard()
            assert lease.released
            assert [e.in_use for e in pool.stats().endpoints] == [1]  # `held` is still out
            await held.release()
            assert [e.in_use for e in pool.stats().endpoints] == [0]

    run(main())
