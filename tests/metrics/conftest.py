"""Fixtures for the metrics tests: real pools over real SQLite connections."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

import pytest

import poolkit


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", check_same_thread=False)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., poolkit.Pool[sqlite3.Connection]]]:
    """Build SQLite pools that are closed when the test ends."""
    pools: list[poolkit.Pool[sqlite3.Connection]] = []

    def make(**kwargs: object) -> poolkit.Pool[sqlite3.Connection]:
        kwargs.setdefault("destroy", lambda c: c.close())
        pool: poolkit.Pool[sqlite3.Connection] = poolkit.Pool(
            kwargs.pop("create", _connect),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
