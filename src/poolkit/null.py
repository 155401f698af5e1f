"""Pools with the full API and no reuse: the "without pooling" baseline."""

from __future__ import annotations

from typing import Any, TypeVar

from .async_pool import AsyncPool
from .pool import Pool

__all__ = ["NullAsyncPool", "NullPool"]

R = TypeVar("R")


def _no_reuse(options: dict[str, Any], cls: str) -> dict[str, Any]:
    for name in ("min_size", "max_uses"):
        if options.get(name) not in (None, 0 if name == "min_size" else 1):
            raise ValueError(f"{cls} never reuses resources: {name} cannot be set")
    options["min_size"] = 0
    options["max_uses"] = 1
    return options


class NullPool(Pool[R]):
    """A :class:`Pool` that creates a resource per borrow and destroys it on return.

    Borrowers are still capped by ``max_size`` and queued, so it measures what pooling
    saves: the same code with ``NullPool`` in place of ``Pool`` runs without reuse.

    Example::

        baseline = poolkit.NullPool(connect, destroy=lambda c: c.close(), max_size=8)
        with baseline.acquire() as conn:   # a fresh connection, closed on exit
            conn.execute("select 1")
    """

    __module__ = "poolkit"

    def __init__(self, factory: Any = None, /, **options: Any) -> None:
        super().__init__(factory, **_no_reuse(options, "NullPool"))


class NullAsyncPool(AsyncPool[R]):
    """The asyncio twin of :class:`NullPool`: one new resource per borrow.

    Example::

        baseline = poolkit.NullAsyncPool(connect, destroy=close, max_size=8)
        async with baseline.acquire() as conn:
            ...
    """

    __module__ = "poolkit"

    def __init__(self, factory: Any = None, /, **options: Any) -> None:
        super().__init__(factory, **_no_reuse(options, "NullAsyncPool"))
