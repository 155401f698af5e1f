"""AsyncHTTPPool (h11 over asyncio) against a private nginx."""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from poolkit.http import AsyncHTTPPool, TLSConfig
from poolkit.http import _async as async_mod

from helpers import wait_for
from servers import PrivateNginx, free_port

pytestmark = pytest.mark.usefixtures("nginx_binary")

T = TypeVar("T")
UA = {"User-Agent": "poolkit-test"}


@pytest.fixture(params=["httptools", "h11"])
def parser(request: pytest.FixtureRequest) -> str:
    """Every async test runs with both response parsers."""
    if request.param == "httptools" and async_mod.httptools is None:
        pytest.skip("httptools is not installed (pip install 'poolkit[http]')")
    return str(request.param)


def run(fn: Callable[[AsyncHTTPPool], Awaitable[T]], **kwargs: Any) -> T:
    """Run ``fn(pool)`` in a fresh event loop with a pool closed afterwards."""

    async def main() -> T:
        async with AsyncHTTPPool(**kwargs) as pool:
            return await fn(pool)

    return asyncio.run(main())


async def conn_of(pool: AsyncHTTPPool, url: str) -> tuple[int, int]:
    resp = await pool.request("GET", url)
    assert resp.status == 200
    serial, count = resp.body.split()
    return int(serial), int(count)


def test_keepalive_reuse_and_concurrency_bound(private_nginx: PrivateNginx, parser: str) -> None:
    web = private_nginx

    async def body(pool: AsyncHTTPPool) -> None:
        for _ in range(10):
            assert (await pool.request("GET", web.url("/"))).body == b"ok\n"

        async def worker() -> None:
            for _ in range(20):
                assert (await pool.request("GET", web.url("/"))).status == 200

        await asyncio.gather(*(worker() for _ in range(10)))
        stats = pool.stats()
        assert stats.created_total <= 3

    run(body, parser=parser, max_per_host=3, headers=UA)
    entries = [e for e in web.access_log(min_entries=210) if e.user_agent == "poolkit-test"]
    assert len(entries) == 210
    assert len({e.connection for e in entries}) <= 3


def test_idle_close_detected_and_retry(
    short_keepalive_nginx: PrivateNginx, monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    web = short_keepalive_nginx

    async def body(pool: AsyncHTTPPool) -> None:
        first, _ = await conn_of(pool, web.url("/conn"))
        await asyncio.to_thread(
            wait_for, lambda: web.status()["active"] == 1, 10, 0.005, "nginx idle close"
        )
        second, count = await conn_of(pool, web.url("/conn"))
        assert second != first and count == 1
        # now the race: the check says fresh, but the server has closed the connection
        monkeypatch.setattr(async_mod._Conn, "is_fresh", lambda self: True)
        await asyncio.to_thread(
            wait_for, lambda: web.status()["active"] == 1, 10, 0.005, "nginx idle close"
        )
        third, count = await conn_of(pool, web.url("/conn"))  # GET: retried once
        assert third != second and count == 1
        await asyncio.to_thread(
            wait_for, lambda: web.status()["active"] == 1, 10, 0.005, "nginx idle close"
        )
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            await pool.request("POST", web.url("/post"), body=b"once")

    run(body, parser=parser)
    assert [e for e in web.access_log() if e.method == "POST"] == []


def test_restart_under_load(private_nginx: PrivateNginx, parser: str) -> None:
    web = private_nginx
    phase = ["before"]
    failures: list[tuple[str, BaseException]] = []

    async def body(pool: AsyncHTTPPool) -> list[int]:
        restarted = asyncio.Event()

        async def worker() -> int:
            ok_after = 0
            for _ in range(5000):
                started_in = phase[0]
                try:
                    assert (await pool.request("GET", web.url("/"))).status == 200
                except (OSError, http.client.HTTPException) as exc:
                    failures.append((started_in, exc))
                    if isinstance(exc, ConnectionRefusedError):
                        await asyncio.wait_for(restarted.wait(), 10)
                    continue
                if started_in == "after":
                    ok_after += 1
                    if ok_after >= 20:
                        break
            return ok_after

        async def restart() -> None:
            await asyncio.to_thread(
                wait_for, lambda: len(web.access_log()) >= 200, 20, 0.005, "load"
            )
            phase[0] = "down"
            await asyncio.to_thread(web.restart)
            phase[0] = "after"
            restarted.set()

        results = await asyncio.gather(*(worker() for _ in range(4)), restart())
        return [r for r in results if r is not None]

    assert run(body, parser=parser, max_per_host=4) == [20] * 4, failures
    assert [e for p, e in failures if p == "after"] == []
    assert len([e for p, e in failures if p == "before"]) <= 4


def test_headers_isolated_and_streams(private_nginx: PrivateNginx, parser: str) -> None:
    web = private_nginx

    async def body(pool: AsyncHTTPPool) -> None:
        url = web.url("/echo-headers")
        secret = (await pool.request("GET", url, headers={"Authorization": "Bearer x"})).json()
        plain = (await pool.request("GET", url)).json()
        assert plain["connection"] == secret["connection"]
        assert secret["authorization"] == "Bearer x" and plain["authorization"] == ""
        async with pool.stream("GET", web.url("/bytes/1048576")) as resp:
            total = 0
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
        assert total == 1048576 and resp.closed
        reused, _ = await conn_of(pool, web.url("/conn"))
        assert reused == int(plain["connection"])
        async with pool.stream("GET", web.url("/bytes/1048576")) as resp:
            async for _ in resp.aiter_bytes():
                break  # stop early: that connection must not be reused
        fresh, count = await conn_of(pool, web.url("/conn"))
        assert fresh != reused and count == 1
        resp2 = await pool.stream("GET", web.url("/bytes/100"))
        assert len(await resp2.read()) == 100
        assert (await pool.request("POST", web.url("/post"), body="abc")).body == b"3\n"
        assert (await pool.request("GET", web.url("/close"))).status == 200
        after_close, count = await conn_of(pool, web.url("/conn"))
        assert after_close != fresh

    run(body, parser=parser, headers=UA)


def test_timeout_and_connect_errors(private_nginx: PrivateNginx, parser: str) -> None:
    async def body(pool: AsyncHTTPPool) -> None:
        with pytest.raises(TimeoutError):
            await pool.request("GET", private_nginx.url("/slow/1048576"), timeout=0.2)
        with pytest.raises(ConnectionRefusedError):
            await pool.request("GET", f"http://127.0.0.1:{free_port()}/")
        assert (await pool.request("GET", private_nginx.url("/"))).status == 200

    run(body, parser=parser)


def test_tls(tls_nginx: Any, certs: Any, parser: str) -> None:
    async def body(pool: AsyncHTTPPool) -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await pool.request("GET", tls_nginx.tls_url("/"))
        good = TLSConfig(ca_file=str(certs.ca))
        a = (await pool.request("GET", tls_nginx.tls_url("/echo-headers"), tls=good)).json()
        b = (await pool.request("GET", tls_nginx.tls_url("/echo-headers"), tls=good)).json()
        c = (
            await pool.request(
                "GET", tls_nginx.tls_url("/echo-headers"), tls=TLSConfig(verify=False)
            )
        ).json()
        assert a["connection"] == b["connection"] != c["connection"]

    run(body, parser=parser)


def test_head_204_and_request_validation(private_nginx: PrivateNginx, parser: str) -> None:
    web = private_nginx

    async def body(pool: AsyncHTTPPool) -> None:
        head = await pool.request("HEAD", web.url("/bytes/1024"))
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == "1024"
        for bad in ({"X-Evil": "a\r\nX-Injected: 1"}, {"Bad Name": "x"}):
            with pytest.raises(ValueError, match="invalid request"):
                await pool.request("GET", web.url("/"), headers=bad)
        _, count = await conn_of(pool, web.url("/conn"))
        assert count == 2  # the HEAD connection was reused; the invalid ones sent nothing
        assert pool.parser == parser

    run(body, parser=parser)
    with pytest.raises(ValueError, match=r"parser \('fast'\) must be one of"):
        AsyncHTTPPool(parser="fast")


def test_invalid_header_error_never_shows_the_value(parser: str) -> None:
    secret = {"Authorization": "Bearer Tok-9d2f\n"}

    async def body(pool: AsyncHTTPPool) -> BaseException:
        with pytest.raises(ValueError, match="invalid request") as info:
            await pool.request("GET", f"http://127.0.0.1:{free_port()}/", headers=secret)
        return info.value

    exc = run(body, parser=parser)
    assert "Tok-9d2f" not in repr(exc) + repr(exc.__cause__) + repr(exc.__context__)
