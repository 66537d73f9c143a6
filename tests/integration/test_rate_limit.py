"""Requests per minute per API key, over HTTP, with real Redis (db 10) and in-process."""

from __future__ import annotations

from httpx import AsyncClient

from tests.conftest import ALICE, BOB, SettingsFactory
from tests.support.app import running_app
from tests.support.cost import (
    TEST_REDIS,
    closed_port,
    flush_test_redis,
    make_settings,
    metric,
    redis_url,
)

__all__ = ["make_settings", "redis_url"]  # fixtures

PROBLEM = "application/problem+json"


async def agents(client: AsyncClient, headers: dict[str, str]) -> int:
    return (await client.get("/agent/agents", headers=headers)).status_code


async def test_a_key_over_its_rate_gets_429_with_retry_after(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with running_app(make_settings(redis_url=redis_url, rate_limit_per_minute=3)) as client:
        limited_before = metric("agentsvc_rate_limited_total")
        assert [await agents(client, ALICE) for _ in range(3)] == [200, 200, 200]
        refused = await client.post(
            "/agent", json={"agent": "assistant", "input": "hi"}, headers=ALICE
        )
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["type"] == "rate_limited"
        # One request every 20 s refills a bucket of 3 per minute.
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        assert metric("agentsvc_rate_limited_total") == limited_before + 1
        # Per key: another key is not affected; unauthenticated routes are not limited.
        assert await agents(client, BOB) == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/agent/agents")).status_code == 401


async def test_rate_limit_zero_refuses_every_request_and_none_refuses_none(
    make_settings: SettingsFactory,
) -> None:
    async with running_app(make_settings(rate_limit_per_minute=0)) as client:
        refused = await client.get("/agent/usage", headers=ALICE)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"
    async with running_app(make_settings()) as client:
        assert {await agents(client, ALICE) for _ in range(50)} == {200}


async def test_replicas_share_one_limit_through_redis(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis_url=TEST_REDIS, rate_limit_per_minute=3)
    await flush_test_redis()
    async with running_app(settings) as first, running_app(settings) as second:
        assert [await agents(first, ALICE), await agents(second, ALICE)] == [200, 200]
        assert await agents(first, ALICE) == 200
        assert await agents(second, ALICE) == 429


async def test_redis_unreachable_lets_requests_through(make_settings: SettingsFactory) -> None:
    dead = f"redis://127.0.0.1:{closed_port()}/10"
    async with running_app(make_settings(redis_url=dead, rate_limit_per_minute=1)) as client:
        errors_before = metric("agentsvc_rate_limit_store_errors_total")
        assert [await agents(client, ALICE) for _ in range(3)] == [200, 200, 200]
        assert metric("agentsvc_rate_limit_store_errors_total") == errors_before + 3


async def test_stored_and_static_keys_of_one_user_are_limited_apart(
    make_settings: SettingsFactory,
) -> None:
    from app.services.auth import Authenticator
    from app.store.db import Database, create_engine

    settings = make_settings(rate_limit_per_minute=1)
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        auth = Authenticator(secret=settings.secret_key.get_secret_value(), db=db)
        stored = await auth.create_key(user_id="alice", role="user")
    finally:
        await db.dispose()
    async with running_app(settings) as client:
        assert await agents(client, ALICE) == 200
        assert await agents(client, ALICE) == 429
        assert await agents(client, {"Authorization": f"Bearer {stored}"}) == 200
