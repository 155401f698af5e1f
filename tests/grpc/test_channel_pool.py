"""ChannelPool and AsyncChannelPool against a real gRPC health server on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from poolkit import PoolClosed, PoolTimeout
from poolkit.grpc import AsyncChannelPool, ChannelPool

from helpers import FakeClock, wait_for
from servers import free_port

REQ = health_pb2.HealthCheckRequest()
SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthServer:
    """grpcio-health-checking's servicer on a fixed loopback port; stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.server: grpc.Server | None = None
        self.start()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(self.target)
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(None).wait(10)
            self.server = None


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.stop()


def test_calls_through_the_pool(health_server: HealthServer) -> None:
    errors: list[BaseException] = []
    with ChannelPool(health_server.target, size=3) as pool:

        def worker() -> None:
            try:
                for _ in range(20):
                    with pool.stub(health_pb2_grpc.HealthStub) as stub:
                        assert stub.Check(REQ, timeout=5).status == SERVING
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = pool.stats()
    assert errors == []
    assert stats.acquired_total == 160 and stats.in_flight == 0 and stats.size == 3


def test_round_robin_and_least_in_flight_spread_borrows(health_server: HealthServer) -> None:
    for strategy in ("round_robin", "least_in_flight"):
        with ChannelPool(health_server.target, size=3, strategy=strategy) as pool:
            borrows = [pool.channel() for _ in range(6)]
            channels = [b.__enter__() for b in borrows]
            assert len({id(c) for c in channels}) == 3
            assert [channels.count(c) for c in channels[:3]] == [2, 2, 2]
            for b in borrows:
                b.__exit__(None, None, None)
            assert pool.stats().in_flight == 0


def test_bound_per_channel_waits_then_times_out(health_server: HealthServer) -> None:
    with ChannelPool(health_server.target, size=1, max_concurrent_per_channel=2) as pool:
        first, second = pool.channel(), pool.channel()
        first.__enter__()
        second.__enter__()
        with pytest.raises(PoolTimeout, match="max_concurrent_per_channel=2"):
            with pool.channel(timeout=0.05):
                pass
        got = threading.Event()

        def waiter() -> None:
            with pool.stub(health_pb2_grpc.HealthStub, timeout=10) as stub:
                stub.Check(REQ, timeout=5)
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        wait_for(lambda: pool.stats().waiting == 1, what="a waiting borrower")
        assert not got.is_set()
        first.__exit__(None, None, None)  # frees a share: the waiter goes on
        assert got.wait(10)
        t.join(10)
        second.__exit__(None, None, None)
        stats = pool.stats()
        assert stats.timeouts_total == 1 and stats.waited_total == 2


def test_close_wakes_waiters(health_server: HealthServer) -> None:
    pool = ChannelPool(health_server.target, size=1, max_concurrent_per_channel=1)
    held = pool.channel()
    held.__enter__()
    result: list[BaseException] = []

    def waiter() -> None:
        try:
            with pool.channel(timeout=30):
                pass
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.stats().waiting == 1, what="a waiting borrower")
    pool.close()
    t.join(10)
    assert len(result) == 1 and isinstance(result[0], PoolClosed)
    with pytest.raises(PoolClosed):
        with pool.channel():
            pass


def test_channel_stuck_in_transient_failure_is_replaced(health_server: HealthServer) -> None:
    clock = FakeClock()
    with ChannelPool(health_server.target, size=2, failure_threshold=5.0, clock=clock) as pool:
        with pool.stub(health_pb2_grpc.HealthStub) as stub:
            assert stub.Check(REQ, timeout=5).status == SERVING
        health_server.stop()
        with pytest.raises(grpc.RpcError) as info:
            with pool.stub(health_pb2_grpc.HealthStub) as stub:
                stub.Check(REQ, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: "TRANSIENT_FAILURE" in pool.stats().states, timeout=20, what="TF state")
        assert pool.maintain() == 0  # not past the threshold yet
        clock.advance(5.0)
        health_server.start()
        assert pool.maintain() >= 1
        with pool.stub(health_pb2_grpc.HealthStub) as stub:
            assert stub.Check(REQ, timeout=5, wait_for_ready=True).status == SERVING
        assert pool.stats().replaced_total >= 1


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"size \(0\) must be >= 1"):
        ChannelPool("127.0.0.1:1", size=0)
    with pytest.raises(ValueError, match=r"max_concurrent_per_channel \(0\)"):
        ChannelPool("127.0.0.1:1", max_concurrent_per_channel=0)
    with pytest.raises(ValueError, match="strategy \\('random'\\)"):
        AsyncChannelPool("127.0.0.1:1", strategy="random")


def test_async_pool(health_server: HealthServer) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with AsyncChannelPool(
            health_server.target, size=2, max_concurrent_per_channel=4, clock=clock
        ) as pool:

            async def call() -> int:
                async with pool.stub(health_pb2_grpc.HealthStub) as stub:
                    return (await stub.Check(REQ, timeout=5)).status  # type: ignore[no-any-return]

            results = await asyncio.gather(*(call() for _ in range(40)))
            assert set(results) == {SERVING}
            stats = pool.stats()
            assert stats.acquired_total == 40 and stats.in_flight == 0
            assert stats.waited_total > 0  # 40 concurrent calls over 2 x 4 shares

            # bound + timeout
            holds = [pool.channel() for _ in range(8)]
            for h in holds:
                await h.__aenter__()
            with pytest.raises(PoolTimeout):
                async with pool.channel(timeout=0.05):
                    pass
            for h in holds:
                await h.__aexit__(None, None, None)

            # server stop/start: the stuck channel is replaced after the threshold
            await asyncio.to_thread(health_server.stop)
            with pytest.raises(grpc.RpcError):
                await call()
            for _ in range(400):
                if "TRANSIENT_FAILURE" in pool.stats().states:
                    break
                await asyncio.sleep(0.05)  # the watcher task reports the state change
            assert "TRANSIENT_FAILURE" in pool.stats().states
            clock.advance(10.0)
            await asyncio.to_thread(health_server.start)
            assert pool.maintain() >= 1
            async with pool.stub(health_pb2_grpc.HealthStub) as stub:
                resp = await stub.Check(REQ, timeout=5, wait_for_ready=True)
            assert resp.status == SERVING

    asyncio.run(main())


def test_async_replaced_channel_in_flight_at_close_is_closed_on_return() -> None:
    async def main() -> None:
        clock = FakeClock()
        pool = AsyncChannelPool(
            f"127.0.0.1:{free_port()}", size=1, failure_threshold=1.0, clock=clock
        )
        borrow = pool.channel()
        old = await borrow.__aenter__()
        for _ in range(400):
            if "TRANSIENT_FAILURE" in pool.stats().states:
                break
            await asyncio.sleep(0.05)
        clock.advance(2.0)
        assert pool.maintain() == 1  # replaced while still borrowed
        await pool.close()
        await borrow.__aexit__(None, None, None)
        for _ in range(100):
            watchers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if not watchers:
                break
            await asyncio.sleep(0.01)
        assert watchers == [], "the replaced channel's watcher outlived the pool"
        assert old._channel.closed()

    asyncio.run(main())
