"""httpx transports backed by poolkit's HTTP pools, so httpx users keep their API."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from poolkit.errors import PoolClosed, PoolTimeout, ResourceCreationError
from poolkit.http._async import AsyncHTTPPool, AsyncStreamResponse
from poolkit.http._models import ConnectTimeout
from poolkit.http._sync import HTTPPool, StreamResponse

__all__ = ["AsyncPoolkitTransport", "PoolkitTransport"]

_SKIP = frozenset({"transfer-encoding", "connection", "keep-alive"})


def _request_parts(request: httpx.Request, body: bytes) -> tuple[list[tuple[str, str]], Any]:
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in request.headers.raw
        if k.lower().decode("latin-1") not in _SKIP
    ]
    has_length = any(k.lower() == "content-length" for k, _ in headers)
    if body and not has_length:
        headers.append(("Content-Length", str(len(body))))
    return headers, (body if (body or has_length) else None)


def _read_timeout(request: httpx.Request) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    value = timeouts.get("read")
    return float(value) if value is not None else None


def _map_error(exc: BaseException) -> BaseException:
    """Translate poolkit/stdlib errors into the httpx exceptions httpx users catch."""
    if isinstance(exc, PoolTimeout):
        cause = exc.__cause__
        if isinstance(cause, TimeoutError):
            return httpx.ConnectTimeout(f"{exc}: {cause}")
        if isinstance(cause, OSError):
            return httpx.ConnectError(f"{exc}: {cause}")
        return httpx.PoolTimeout(str(exc))
    if isinstance(exc, ResourceCreationError):
        cause = exc.__cause__
        if isinstance(cause, TimeoutError):
            return httpx.ConnectTimeout(str(cause))
        return httpx.ConnectError(str(cause or exc))
    if isinstance(exc, PoolClosed):
        return RuntimeError(f"the poolkit HTTP pool is closed: {exc}")
    if isinstance(exc, ConnectTimeout):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, (ConnectionRefusedError, ssl.SSLError, socket.gaierror)):
        return httpx.ConnectError(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(str(exc) or "timed out")
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):
        return httpx.ReadError(str(exc) or type(exc).__name__)
    return exc


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except (OSError, http.client.HTTPException, PoolTimeout, PoolClosed) as exc:
        mapped = _map_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    except ResourceCreationError as exc:
        raise _map_error(exc) from exc


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, resp: StreamResponse) -> None:
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._resp.iter_bytes()

    def close(self) -> None:
        self._resp.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, resp: AsyncStreamResponse) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self._resp.aiter_bytes():
                yield chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


class PoolkitTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` whose connections live in a poolkit :class:`HTTPPool`.

    Pass a pool to share it, or pool keyword arguments to make one the transport owns.
    httpx's read timeout maps to the request timeout; poolkit errors map to httpx's.

    Example::

        transport = PoolkitTransport(max_per_host=32)
        with httpx.Client(transport=transport) as client:
            client.get("http://127.0.0.1:8080/").raise_for_status()
    """

    def __init__(self, pool: HTTPPool | None = None, **pool_kwargs: Any) -> None:
        if pool is not None and pool_kwargs:
            raise ValueError(f"give a pool or pool arguments, not both ({sorted(pool_kwargs)})")
        self.pool = pool if pool is not None else HTTPPool(**pool_kwargs)
        self._owns_pool = pool is None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pool; the body streams back lazily."""
        headers, payload = _request_parts(request, request.read())
        with _mapped():
            resp = self.pool.stream(
                request.method,
                str(request.url),
                headers=headers,
                body=payload,
                timeout=_read_timeout(request),
            )
        return httpx.Response(
            resp.status,
            headers=resp.headers.raw,
            stream=_SyncBody(resp),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": resp.reason.encode()},
        )

    def close(self) -> None:
        """Close the pool if this transport made it."""
        if self._owns_pool:
            self.pool.close()


class AsyncPoolkitTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` whose connections live in a poolkit :class:`AsyncHTTPPool`.

    Example::

        async with httpx.AsyncClient(transport=AsyncPoolkitTransport()) as client:
            resp = await client.get("http://127.0.0.1:8080/")
    """

    def __init__(self, pool: AsyncHTTPPool | None = None, **pool_kwargs: Any) -> None:
        if pool is not None and pool_kwargs:
            raise ValueError(f"give a pool or pool arguments, not both ({sorted(pool_kwargs)})")
        self.pool = pool if pool is not None else AsyncHTTPPool(**pool_kwargs)
        self._owns_pool = pool is None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pool; the body streams back lazily."""
        headers, payload = _request_parts(request, await request.aread())
        with _mapped():
            resp = await self.pool.stream(
                request.method,
                str(request.url),
                headers=headers,
                body=payload,
                timeout=_read_timeout(request),
            )
        return httpx.Response(
            resp.status,
            headers=resp.headers.raw,
            stream=_AsyncBody(resp),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": resp.reason.encode()},
        )

    async def aclose(self) -> None:
        """Close the pool if this transport made it."""
        if self._owns_pool:
            await self.pool.aclose()
