"""Benchmark: HTTP/1.1 keep-alive pools against a private nginx on loopback, small responses.

Every client sends ``GET /`` (a 3-byte body) for a fixed time with 1 and 32 concurrent
callers (threads for sync clients, tasks for asyncio clients); the table shows requests/s
and the ratio to poolkit (and, for sync, to opening a new connection per request).

* sync: new connection per request (``http.client``, the no-pool baseline), poolkit
  ``HTTPPool``, ``requests.Session``, ``urllib3.PoolManager``, ``httpx.Client``, and
  ``httpx.Client`` on poolkit's ``PoolkitTransport``;
* asyncio: poolkit ``AsyncHTTPPool``, ``httpx.AsyncClient``, ``aiohttp.ClientSession``,
  ``httpx.AsyncClient`` on ``AsyncPoolkitTransport``.

Every pool may keep up to 32 connections to the host. nginx runs one worker process on the
same 2-core machine, so absolute numbers are small and noisy; compare ratios of one run.

Usage::

    .venv/bin/python benchmarks/bench_http.py           # 2 s per cell
    .venv/bin/python benchmarks/bench_http.py --quick   # 0.5 s per cell
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp
import httpx
import requests
import urllib3

from poolkit.http import (
    AsyncHTTPPool,
    AsyncPoolkitTransport,
    HTTPPool,
    PoolkitTransport,
)

from servers import PrivateNginx

MAX = 32
SyncMaker = Callable[[str], tuple[Callable[[], None], Callable[[], None]]]
AsyncMaker = Callable[[str], Awaitable[tuple[Callable[[], Awaitable[None]], Any]]]


# -- sync clients ---------------------------------------------------------------------------


def new_connection(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    host, port = url.split("//")[1].rstrip("/").split(":")

    def get() -> None:
        conn = http.client.HTTPConnection(host, int(port))
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        finally:
            conn.close()

    return get, lambda: None


def poolkit_sync(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = HTTPPool(max_per_host=MAX)
    request = pool.request

    def get() -> None:
        assert request("GET", url).status == 200

    return get, pool.close


def requests_session(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX)
    session.mount("http://", adapter)

    def get() -> None:
        assert session.get(url).status_code == 200

    return get, session.close


def urllib3_manager(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    manager = urllib3.PoolManager(maxsize=MAX)

    def get() -> None:
        assert manager.request("GET", url).status == 200

    return get, manager.clear


def httpx_client(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    limits = httpx.Limits(max_connections=MAX, max_keepalive_connections=MAX)
    client = httpx.Client(limits=limits)

    def get() -> None:
        assert client.get(url).status_code == 200

    return get, client.close


def httpx_on_poolkit(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    client = httpx.Client(transport=PoolkitTransport(max_per_host=MAX))

    def get() -> None:
        assert client.get(url).status_code == 200

    return get, client.close


SYNC: list[tuple[str, SyncMaker]] = [
    ("new connection per request (http.client)", new_connection),
    ("poolkit HTTPPool", poolkit_sync),
    ("requests.Session", requests_session),
    ("urllib3.PoolManager", urllib3_manager),
    ("httpx.Client", httpx_client),
    ("httpx.Client + poolkit PoolkitTransport", httpx_on_poolkit),
]


def run_sync(make: SyncMaker, url: str, callers: int, seconds: float) -> float:
    get, close = make(url)
    try:
        get()  # warm up: connect once
        counts = [0] * callers
        stop = threading.Event()
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    get()
                    n += 1
            except BaseException as exc:
                errors.append(exc)
            counts[i] = n

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
        gc.collect()
        start = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise errors[0]
        return sum(counts) / elapsed
    finally:
        close()


# -- asyncio clients ------------------------------------------------------------------------


async def poolkit_async(url: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    pool = AsyncHTTPPool(max_per_host=MAX)
    request = pool.request

    async def get() -> None:
        assert (await request("GET", url)).status == 200

    return get, pool.aclose


async def httpx_async(url: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    limits = httpx.Limits(max_connections=MAX, max_keepalive_connections=MAX)
    client = httpx.AsyncClient(limits=limits)

    async def get() -> None:
        assert (await client.get(url)).status_code == 200

    return get, client.aclose


async def aiohttp_session(url: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX))

    async def get() -> None:
        async with session.get(url) as resp:
            assert resp.status == 200
            await resp.read()

    return get, session.close


async def httpx_async_on_poolkit(url: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    client = httpx.AsyncClient(transport=AsyncPoolkitTransport(max_per_host=MAX))

    async def get() -> None:
        assert (await client.get(url)).status_code == 200

    return get, client.aclose


ASYNC: list[tuple[str, AsyncMaker]] = [
    ("poolkit AsyncHTTPPool", poolkit_async),
    ("httpx.AsyncClient", httpx_async),
    ("aiohttp.ClientSession", aiohttp_session),
    ("httpx.AsyncClient + poolkit AsyncPoolkitTransport", httpx_async_on_poolkit),
]


def run_async(make: AsyncMaker, url: str, callers: int, seconds: float) -> float:
    async def main() -> float:
        get, close = await make(url)
        try:
            await get()
            counts = [0] * callers
            deadline = 0.0

            async def worker(i: int) -> None:
                n = 0
                loop_time = asyncio.get_running_loop().time
                while loop_time() < deadline:
                    await get()
                    n += 1
                counts[i] = n

            gc.collect()
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            deadline = loop.time() + seconds
            await asyncio.gather(*(worker(i) for i in range(callers)))
            return sum(counts) / (time.perf_counter() - start)
        finally:
            await close()

    return asyncio.run(main())


# -- report ---------------------------------------------------------------------------------


def table(title: str, rows: list[tuple[str, dict[int, float]]], base: str | None) -> None:
    callers = sorted(rows[0][1])
    poolkit = next(r for name, r in rows if name.startswith("poolkit"))
    print(f"\n{title}")
    head = "".join(f"{f'{c} caller(s) req/s':>22}{'vs poolkit':>12}" for c in callers)
    extra = f"{'poolkit / this':>16}" if base is None else ""
    print(f"  {'client':<52}{head}{extra}")
    for name, result in rows:
        cells = "".join(f"{result[c]:>22,.0f}{result[c] / poolkit[c]:>11.2f}x" for c in callers)
        print(f"  {name:<52}{cells}")
    if base is not None:
        baseline = next(r for name, r in rows if name == base)
        ratios = ", ".join(f"{c} callers: {poolkit[c] / baseline[c]:.1f}x" for c in callers)
        print(f"  poolkit vs new connection per request: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.5 s per cell instead of 2 s")
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 2.0
    callers = (1, 32)
    with PrivateNginx(keepalive_requests=10_000_000) as web:
        url = web.url("/")
        sync_rows = []
        for name, make in SYNC:
            result = {c: run_sync(make, url, c, seconds) for c in callers}
            sync_rows.append((name, result))
            print(f"  measured {name}", file=sys.stderr)
        async_rows = []
        for name, amake in ASYNC:
            result = {c: run_async(amake, url, c, seconds) for c in callers}
            async_rows.append((name, result))
            print(f"  measured {name}", file=sys.stderr)
    print(f"\nGET / against nginx on loopback, {seconds:g} s per cell, up to {MAX} connections")
    table("sync (threads)", sync_rows, base="new connection per request (http.client)")
    table("asyncio (tasks)", async_rows, base=None)


if __name__ == "__main__":
    main()
