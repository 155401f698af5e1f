"""Fixtures for the Redis budget tests: a unique budget name per test on the shared Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    """A plain client of the machine's Redis (skips the test when it is not running)."""
    client = redis.Redis.from_url(SHARED_REDIS, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        pytest.skip(f"Redis on 127.0.0.1:6379 unavailable: {exc}")
    yield client
    client.close()


@pytest.fixture
def budget_name(rclient: redis.Redis) -> Iterator[str]:
    """A budget name no other test (or teammate) uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(rclient.scan_iter(match=f"{{poolkit:budget:{name}}}:*", count=100))
    if keys:
        rclient.delete(*keys)
