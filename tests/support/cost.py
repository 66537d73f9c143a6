"""Shared by the budget and rate-limit tests: their Redis database, metrics, a dead port."""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from tests.conftest import SettingsFactory

TEST_REDIS = "redis://127.0.0.1:6379/10"
"""Budgets' and rate limits' own database index (emptied by these tests only)."""


async def flush_test_redis() -> None:
    client = redis.Redis.from_url(TEST_REDIS)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def redis_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """This process's stand-ins, or real Redis (db 10, emptied for each test)."""
    if request.param == "memory":
        yield None
        return
    await flush_test_redis()
    yield TEST_REDIS


def metric(name: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry (0 when never recorded)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def make_settings(make_settings: SettingsFactory) -> SettingsFactory:
    """Settings whose Redis calls have slack (2 s): on a loaded test machine a slow answer
    must not pass for Redis being down. Down-Redis tests refuse connections at once."""
    return functools.partial(make_settings, redis_timeout_s=2.0)
