"""Benchmark: gRPC unary calls through pooled channels vs one channel vs a channel per call.

A grpcio health server (``grpc.health.v1.Health/Check``) runs in its own process on a free
loopback port; clients call it for a fixed time with 1 and 32 concurrent callers:

* sync (threads): a new channel per call (connect + HTTP/2 handshake each time), one shared
  channel, poolkit ``ChannelPool`` (4 channels, least in flight);
* asyncio (tasks): the same with ``grpc.aio`` and ``AsyncChannelPool``.

The server is written in Python too, so it caps throughput; the table shows calls/s and
the ratio to poolkit.

Usage::

    .venv/bin/python benchmarks/bench_grpc.py           # best of 3 x 1 s per cell
    .venv/bin/python benchmarks/bench_grpc.py --quick   # 1 x 0.3 s per cell
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from poolkit.grpc import AsyncChannelPool, ChannelPool

_TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(_TESTS))
from servers import free_port  # noqa: E402  (the tests' free loopback port helper)

CALLERS = (1, 32)
CHANNELS = 4
REQ = health_pb2.HealthCheckRequest()
# without it grpc would quietly reuse another live channel's connection (its global
# subchannel pool), and "a channel per call" would not pay for a connection
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SERVER = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(sys.argv[1])
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop(None)
"""


@contextlib.contextmanager
def health_server() -> Iterator[str]:
    target = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield target
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- sync -----------------------------------------------------------------------------------

SyncMaker = Callable[[str], tuple[Callable[[], None], Callable[[], None]]]


def channel_per_call(target: str) -> tuple[Callable[[], None], Callable[[], None]]:
    def call() -> None:
        with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
            health_pb2_grpc.HealthStub(channel).Check(REQ, timeout=10)

    return call, lambda: None


def one_channel(target: str) -> tuple[Callable[[], None], Callable[[], None]]:
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)

    def call() -> None:
        stub.Check(REQ, timeout=10)

    return call, channel.close


def channel_pool(target: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = ChannelPool(target, size=CHANNELS)
    borrow = pool.stub
    stub_class = health_pb2_grpc.HealthStub

    def call() -> None:
        with borrow(stub_class) as stub:
            stub.Check(REQ, timeout=10)

    return call, pool.close


SYNC: list[tuple[str, SyncMaker]] = [
    ("a new channel per call", channel_per_call),
    ("one shared channel", one_channel),
    (f"poolkit ChannelPool ({CHANNELS} channels)", channel_pool),
]


def run_sync(make: SyncMaker, target: str, callers: int, seconds: float) -> float:
    call, close = make(target)
    try:
        call()
        counts = [0] * callers
        stop = threading.Event()

        def worker(i: int) -> None:
            n = 0
            while not stop.is_set():
                call()
                n += 1
            counts[i] = n

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)
    finally:
        close()


# -- asyncio --------------------------------------------------------------------------------

AsyncMaker = Callable[[str], Awaitable[tuple[Callable[[], Awaitable[None]], Any]]]


async def aio_channel_per_call(target: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    async def call() -> None:
        async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(REQ, timeout=10)

    async def close() -> None:
        return None

    return call, close


async def aio_one_channel(target: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    channel = grpc.aio.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)

    async def call() -> None:
        await stub.Check(REQ, timeout=10)

    return call, channel.close


async def aio_channel_pool(target: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    pool = AsyncChannelPool(target, size=CHANNELS)
    stub_class = health_pb2_grpc.HealthStub

    async def call() -> None:
        async with pool.stub(stub_class) as stub:
            await stub.Check(REQ, timeout=10)

    return call, pool.close


ASYNC: list[tuple[str, AsyncMaker]] = [
    ("a new channel per call", aio_channel_per_call),
    ("one shared channel", aio_one_channel),
    (f"poolkit AsyncChannelPool ({CHANNELS} channels)", aio_channel_pool),
]


def run_async(make: AsyncMaker, target: str, callers: int, seconds: float) -> float:
    async def main() -> float:
        call, close = await make(target)
        try:
            await call()
            counts = [0] * callers
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds

            async def worker(i: int) -> None:
                n = 0
                while loop.time() < deadline:
                    await call()
                    n += 1
                counts[i] = n

            start = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(callers)))
            return sum(counts) / (time.perf_counter() - start)
        finally:
            await close()

    return asyncio.run(main())


# -- report ---------------------------------------------------------------------------------


def measure(
    runner: Callable[..., float],
    clients: list[tuple[str, Any]],
    target: str,
    seconds: float,
    rounds: int,
) -> list[tuple[str, dict[int, float]]]:
    best: dict[str, dict[int, float]] = {name: dict.fromkeys(CALLERS, 0.0) for name, _ in clients}
    for _ in range(rounds):
        for name, make in clients:
            for c in CALLERS:
                best[name][c] = max(best[name][c], runner(make, target, c, seconds))
    return [(name, best[name]) for name, _ in clients]


def table(title: str, rows: list[tuple[str, dict[int, float]]]) -> None:
    poolkit = next(r for name, r in rows if name.startswith("poolkit"))
    print(f"\n{title}")
    head = "".join(f"{f'{c} caller(s) calls/s':>24}{'vs poolkit':>12}" for c in CALLERS)
    print(f"  {'client':<42}{head}")
    for name, result in rows:
        cells = "".join(f"{result[c]:>24,.0f}{result[c] / poolkit[c]:>11.2f}x" for c in CALLERS)
        print(f"  {name:<42}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 x 0.3 s per cell")
    args = parser.parse_args()
    seconds, rounds = (0.3, 1) if args.quick else (1.0, 3)
    with health_server() as target:
        sync_rows = measure(run_sync, SYNC, target, seconds, rounds)
        async_rows = measure(run_async, ASYNC, target, seconds, rounds)
    print(
        f"\nHealth/Check against a grpcio server process on loopback; best of {rounds} x "
        f"{seconds:g} s per cell"
    )
    table("sync (threads)", sync_rows)
    table("asyncio (tasks)", async_rows)


if __name__ == "__main__":
    main()
