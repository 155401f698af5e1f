"""Settings and keyed-pool construction shared by the HTTP pools (one sub-pool per origin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from poolkit.async_keyed import AsyncKeyedPool
from poolkit.http._models import Origin, TLSConfig
from poolkit.keyed import KeyedPool

__all__ = ["OriginTable", "PoolSettings", "async_keyed_pool", "keyed_pool"]

C = TypeVar("C")


@dataclass(frozen=True)
class PoolSettings:
    """Validated settings shared by ``HTTPPool`` and ``AsyncHTTPPool``."""

    max_per_host: int
    max_total: int | None
    idle_timeout: float | None
    max_lifetime: float | None
    max_requests: int | None
    connect_timeout: float | None
    acquire_timeout: float
    name: str
    clock: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if self.max_per_host < 1:
            raise ValueError(f"max_per_host ({self.max_per_host}) must be >= 1")
        if self.max_total is not None and self.max_total < self.max_per_host:
            raise ValueError(
                f"max_total ({self.max_total}) must be >= max_per_host ({self.max_per_host})"
                " or None"
            )
        for label, value in (
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("connect_timeout", self.connect_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{label} ({value}) must be > 0 or None")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests ({self.max_requests}) must be >= 1 or None")
        if self.acquire_timeout < 0:
            raise ValueError(f"acquire_timeout ({self.acquire_timeout}) must be >= 0")


class OriginTable:
    """The pool keys, one :class:`Origin` per (scheme, host, port, TLS settings).

    Plain ``http`` origins carry no TLS settings; ``https`` ones carry the request's
    :class:`TLSConfig` or the pool's default, so connections never cross TLS settings.
    """

    __slots__ = ("_default_tls", "_origins")

    def __init__(self, default_tls: TLSConfig) -> None:
        self._default_tls = default_tls
        self._origins: dict[tuple[str, str, int, TLSConfig | None], Origin] = {}

    def get(self, scheme: str, host: str, port: int, tls: TLSConfig | None) -> Origin:
        """The interned origin for a request to ``scheme://host:port`` with ``tls``."""
        tls_key = (tls or self._default_tls) if scheme == "https" else None
        key = (scheme, host, port, tls_key)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins.setdefault(key, Origin(scheme, host, port, tls_key))
        return origin

    def __len__(self) -> int:
        return len(self._origins)


def keyed_pool(
    settings: PoolSettings, create: Callable[[Origin], C], destroy: Callable[[C], None]
) -> KeyedPool[Origin, C]:
    """The thread-safe keyed pool (one sub-pool per origin) behind ``HTTPPool``."""
    s = settings
    return KeyedPool(
        create,
        destroy=destroy,
        max_per_key=s.max_per_host,
        max_total=s.max_total,
        idle_timeout=s.idle_timeout,
        max_lifetime=s.max_lifetime,
        max_uses=s.max_requests,
        acquire_timeout=s.acquire_timeout,
        check_after_idle=None,  # the HTTP pools run their own (cheaper) readability check
        name=s.name,
        clock=s.clock,
    )


def async_keyed_pool(
    settings: PoolSettings,
    create: Callable[[Origin], Awaitable[C]],
    destroy: Callable[[C], Awaitable[None]],
) -> AsyncKeyedPool[Origin, C]:
    """The asyncio keyed pool (one sub-pool per origin) behind ``AsyncHTTPPool``."""
    s = settings
    return AsyncKeyedPool(
        create,
        destroy=destroy,
        max_per_key=s.max_per_host,
        max_total=s.max_total,
        idle_timeout=s.idle_timeout,
        max_lifetime=s.max_lifetime,
        max_uses=s.max_requests,
        acquire_timeout=s.acquire_timeout,
        check_after_idle=None,
        name=s.name,
        clock=s.clock,
    )
