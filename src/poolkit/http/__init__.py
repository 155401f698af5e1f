"""HTTP/1.1 keep-alive connection pools (sync and asyncio) and httpx transports on top."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolkit.http._models import (
    IDEMPOTENT_METHODS,
    ConnectTimeout,
    Headers,
    Origin,
    ProtocolError,
    Response,
    TLSConfig,
)
from poolkit.http._sync import HTTPPool, StreamResponse

if TYPE_CHECKING:
    from poolkit.http._async import AsyncHTTPPool, AsyncStreamResponse
    from poolkit.http._httpx import AsyncPoolkitTransport, PoolkitTransport

__all__ = [
    "IDEMPOTENT_METHODS",
    "AsyncHTTPPool",
    "AsyncPoolkitTransport",
    "AsyncStreamResponse",
    "ConnectTimeout",
    "HTTPPool",
    "Headers",
    "Origin",
    "PoolkitTransport",
    "ProtocolError",
    "Response",
    "StreamResponse",
    "TLSConfig",
]

# The asyncio pool needs h11 and the transports need httpx: import them on first use, so
# the thread pool works with the standard library alone.
_LAZY = {
    "AsyncHTTPPool": "poolkit.http._async",
    "AsyncStreamResponse": "poolkit.http._async",
    "PoolkitTransport": "poolkit.http._httpx",
    "AsyncPoolkitTransport": "poolkit.http._httpx",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit.http' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
