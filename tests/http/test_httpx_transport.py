"""httpx.Client / httpx.AsyncClient running on poolkit's transports."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from poolkit.http import AsyncPoolkitTransport, HTTPPool, PoolkitTransport

from servers import PrivateNginx, free_port

pytestmark = pytest.mark.usefixtures("nginx_binary")


def test_sync_client(private_nginx: PrivateNginx) -> None:
    web = private_nginx
    with httpx.Client(transport=PoolkitTransport(max_per_host=2)) as client:
        serials = {client.get(web.url("/conn")).text.split()[0] for _ in range(5)}
        assert len(serials) == 1
        r = client.post(web.url("/post"), content=b"x" * 3000)
        assert r.status_code == 200 and r.text == "3000\n"
        r = client.post(web.url("/post"), content=iter([b"ab", b"cd"]))  # chunked by httpx
        assert r.text == "4\n"
        echo = client.get(web.url("/echo-headers"), headers={"Authorization": "t0ken"}).json()
        assert echo["authorization"] == "t0ken"
        assert client.get(web.url("/echo-headers")).json()["authorization"] == ""
        with client.stream("GET", web.url("/bytes/1048576")) as resp:
            assert sum(len(c) for c in resp.iter_bytes()) == 1048576
        assert client.get(web.url("/code/503")).status_code == 503
        assert client.get(web.url("/conn")).text.split()[0] in serials
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(httpx.ReadTimeout):
            client.get(web.url("/slow/1048576"), timeout=0.2)


def test_shared_pool_and_arguments(private_nginx: PrivateNginx) -> None:
    with HTTPPool() as pool:
        with pytest.raises(ValueError, match="not both"):
            PoolkitTransport(pool, max_per_host=3)
        with httpx.Client(transport=PoolkitTransport(pool)) as client:
            assert client.get(private_nginx.url("/")).text == "ok\n"
        assert not pool.closed  # a shared pool outlives the client
        assert pool.request("GET", private_nginx.url("/")).status == 200
        assert pool.stats().created_total == 1


def test_async_client(private_nginx: PrivateNginx) -> None:
    web = private_nginx

    async def main() -> None:
        transport = AsyncPoolkitTransport(max_per_host=4)
        async with httpx.AsyncClient(transport=transport) as client:
            rs = await asyncio.gather(*(client.get(web.url("/conn")) for _ in range(20)))
            assert {r.status_code for r in rs} == {200}
            assert len({r.text.split()[0] for r in rs}) <= 4
            async with client.stream("GET", web.url("/bytes/65536")) as resp:
                n = 0
                async for chunk in resp.aiter_bytes():
                    n += len(chunk)
            assert n == 65536
            r = await client.post(web.url("/post"), json={"a": 1})
            assert r.text == "7\n"  # httpx sends compact JSON: {"a":1}
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/")

    asyncio.run(main())
