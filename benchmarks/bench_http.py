"""Benchmark: HTTP/1.1 keep-alive pools against a private nginx on loopback, small responses.

Every client sends ``GET /`` (a 3-byte body) for a fixed time with 1 and 32 concurrent
callers (threads for sync clients, tasks for asyncio clients); the table shows requests/s
and the ratio to poolkit (and, for sync, to opening a new connection per request).

* sync: new connection per request (``http.client``, the no-pool baseline), poolkit
  ``HTTPPool``, ``requests.Session``, ``urllib3.PoolManager``, ``httpx.Client``,
  ``httpx.Client`` on poolkit's ``PoolkitTransport``, and ``HTTPPool`` on the standard
  library's ``http.client`` (what you get without httptools);
* asyncio: poolkit ``AsyncHTTPPool``, ``httpx.AsyncClient``, ``aiohttp.ClientSession``,
  ``httpx.AsyncClient`` on ``AsyncPoolkitTransport``, and ``AsyncHTTPPool`` on the
  pure-Python ``h11`` parser (what you get without httptools).

Every pool may keep up to 32 connections to the host. The same runs repeat over https
(TLS 1.3, a test CA), where a new connection costs a full handshake. nginx runs one worker
process on the same 2-core machine, so absolute numbers are small and noisy; compare the
ratios of one run.

Usage::

    .venv/bin/python benchmarks/bench_http.py           # best of 3 x 1 s per cell (~3 min)
    .venv/bin/python benchmarks/bench_http.py --quick   # 1 x 0.3 s per cell (~20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import requests
import urllib3

from poolkit.http import (
    AsyncHTTPPool,
    AsyncPoolkitTransport,
    HTTPPool,
    PoolkitTransport,
    TLSConfig,
)

_TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "http")]
from tls_nginx import TLSNginx, make_certs  # noqa: E402  (the private nginx of the tests)

MAX = 32
CALLERS = (1, 32)
SyncMaker = Callable[[str, "str | None"], tuple[Callable[[], None], Callable[[], None]]]
AsyncMaker = Callable[[str, "str | None"], Awaitable[tuple[Callable[[], Awaitable[None]], Any]]]


def context(ca: str | None) -> ssl.SSLContext | None:
    return None if ca is None else ssl.create_default_context(cafile=ca)


# -- sync clients ---------------------------------------------------------------------------


def new_connection(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    ctx = context(ca)

    def get() -> None:
        conn = (
            http.client.HTTPSConnection(host, int(port), context=ctx)
            if ctx is not None
            else http.client.HTTPConnection(host, int(port))
        )
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        finally:
            conn.close()

    return get, lambda: None


def poolkit_sync(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = HTTPPool(max_per_host=MAX, tls=TLSConfig(ca_file=ca))
    request = pool.request

    def get() -> None:
        assert request("GET", url).status == 200

    return get, pool.close


def poolkit_sync_stdlib(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = HTTPPool(max_per_host=MAX, tls=TLSConfig(ca_file=ca), parser="http.client")
    request = pool.request

    def get() -> None:
        assert request("GET", url).status == 200

    return get, pool.close


def requests_session(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment beats .verify
    if ca is not None:
        session.verify = ca
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def get() -> None:
        assert session.get(url).status_code == 200

    return get, session.close


def urllib3_manager(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    manager = urllib3.PoolManager(maxsize=MAX, ca_certs=ca)

    def get() -> None:
        assert manager.request("GET", url).status == 200

    return get, manager.clear


def httpx_client(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    limits = httpx.Limits(max_connections=MAX, max_keepalive_connections=MAX)
    client = httpx.Client(limits=limits, verify=context(ca) or True)

    def get() -> None:
        assert client.get(url).status_code == 200

    return get, client.close


def httpx_on_poolkit(url: str, ca: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    transport = PoolkitTransport(max_per_host=MAX, tls=TLSConfig(ca_file=ca))
    client = httpx.Client(transport=transport)

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
    ("poolkit HTTPPool, parser='http.client' (stdlib)", poolkit_sync_stdlib),
]


def run_sync(make: SyncMaker, url: str, ca: str | None, callers: int, seconds: float) -> float:
    get, close = make(url, ca)
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


async def poolkit_async(url: str, ca: str | None) -> tuple[Callable[[], Awaitable[None]], Any]:
    pool = AsyncHTTPPool(max_per_host=MAX, tls=TLSConfig(ca_file=ca))
    request = pool.request

    async def get() -> None:
        assert (await request("GET", url)).status == 200

    return get, pool.aclose


async def poolkit_async_h11(url: str, ca: str | None) -> tuple[Callable[[], Awaitable[None]], Any]:
    pool = AsyncHTTPPool(max_per_host=MAX, tls=TLSConfig(ca_file=ca), parser="h11")
    request = pool.request

    async def get() -> None:
        assert (await request("GET", url)).status == 200

    return get, pool.aclose


async def httpx_async(url: str, ca: str | None) -> tuple[Callable[[], Awaitable[None]], Any]:
    limits = httpx.Limits(max_connections=MAX, max_keepalive_connections=MAX)
    client = httpx.AsyncClient(limits=limits, verify=context(ca) or True)

    async def get() -> None:
        assert (await client.get(url)).status_code == 200

    return get, client.aclose


async def aiohttp_session(url: str, ca: str | None) -> tuple[Callable[[], Awaitable[None]], Any]:
    connector = aiohttp.TCPConnector(limit=MAX, ssl=context(ca) or True)
    session = aiohttp.ClientSession(connector=connector)

    async def get() -> None:
        async with session.get(url) as resp:
            assert resp.status == 200
            await resp.read()

    return get, session.close


async def httpx_async_on_poolkit(
    url: str, ca: str | None
) -> tuple[Callable[[], Awaitable[None]], Any]:
    transport = AsyncPoolkitTransport(max_per_host=MAX, tls=TLSConfig(ca_file=ca))
    client = httpx.AsyncClient(transport=transport)

    async def get() -> None:
        assert (await client.get(url)).status_code == 200

    return get, client.aclose


ASYNC: list[tuple[str, AsyncMaker]] = [
    ("poolkit AsyncHTTPPool", poolkit_async),
    ("httpx.AsyncClient", httpx_async),
    ("aiohttp.ClientSession", aiohttp_session),
    ("httpx.AsyncClient + poolkit AsyncPoolkitTransport", httpx_async_on_poolkit),
    ("poolkit AsyncHTTPPool, parser='h11' (pure Python)", poolkit_async_h11),
]


def run_async(make: AsyncMaker, url: str, ca: str | None, callers: int, seconds: float) -> float:
    async def main() -> float:
        get, close = await make(url, ca)
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
    poolkit = next(r for name, r in rows if name.startswith("poolkit"))  # the pool itself
    print(f"\n{title}")
    head = "".join(f"{f'{c} caller(s) req/s':>22}{'vs poolkit':>12}" for c in callers)
    print(f"  {'client':<52}{head}")
    for name, result in rows:
        cells = "".join(f"{result[c]:>22,.0f}{result[c] / poolkit[c]:>11.2f}x" for c in callers)
        print(f"  {name:<52}{cells}")
    if base is not None:
        baseline = next(r for name, r in rows if name == base)
        ratios = ", ".join(f"{c} callers: {poolkit[c] / baseline[c]:.1f}x" for c in callers)
        print(f"  poolkit vs new connection per request: {ratios}")


def measure(
    runner: Callable[..., float],
    clients: list[tuple[str, Any]],
    url: str,
    ca: str | None,
    seconds: float,
    rounds: int,
) -> list[tuple[str, dict[int, float]]]:
    """Best of ``rounds`` per cell; rounds interleave the clients, so a noisy neighbour on
    the machine hurts every client alike instead of one."""
    best: dict[str, dict[int, float]] = {name: dict.fromkeys(CALLERS, 0.0) for name, _ in clients}
    for _ in range(rounds):
        for name, make in clients:
            for c in CALLERS:
                best[name][c] = max(best[name][c], runner(make, url, ca, c, seconds))
            print(f"  measured {name} ({'https' if ca else 'http'})", file=sys.stderr)
    return [(name, best[name]) for name, _ in clients]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per cell, 1 round")
    parser.add_argument("--no-tls", action="store_true", help="skip the https tables")
    args = parser.parse_args()
    seconds, rounds = (0.3, 1) if args.quick else (1.0, 3)
    with tempfile.TemporaryDirectory(prefix="poolkit-bench-tls-") as tmp:
        certs = make_certs(Path(tmp))
        with TLSNginx(certs, keepalive_requests=10_000_000) as web:
            runs = [("http", web.url("/"), None)]
            if not args.no_tls:
                runs.append(("https", web.tls_url("/"), str(certs.ca)))
            results = []
            for scheme, url, ca in runs:
                sync_rows = measure(run_sync, SYNC, url, ca, seconds, rounds)
                async_rows = measure(run_async, ASYNC, url, ca, seconds, rounds)
                results.append((scheme, sync_rows, async_rows))
    print(
        f"\nGET / (3-byte body) against nginx on loopback; best of {rounds} x {seconds:g} s "
        f"per cell; up to {MAX} connections per client"
    )
    for scheme, sync_rows, async_rows in results:
        table(f"{scheme}, sync (threads)", sync_rows, base=SYNC[0][0])
        table(f"{scheme}, asyncio (tasks)", async_rows, base=None)


if __name__ == "__main__":
    main()
