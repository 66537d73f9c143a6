"""The prompt cache through the service: hits, misses, namespaces, TTL, budget, Redis down.

Every test runs on SQLite and PostgreSQL, each with the in-process cache and with real
Redis (DB 13, flushed before each test); the model is a fake OpenAI server on loopback.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from httpx import AsyncClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.llm.pricing import PRICES
from tests.conftest import ALICE, BOB, SettingsFactory
from tests.fakes.llm_server import FakeLLMServer, TextReply, ToolCallReply, Usage, serve_fake_openai
from tests.support.app import running_app
from tests.support.sse import collect

CACHE_REDIS = "redis://127.0.0.1:6379/13"
AGENTS = "tests.support.cache_agents"


@pytest.fixture(params=["in-process", "redis"])
async def redis_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """No Redis (the in-process cache) or the real one, on this file's own DB index."""
    if request.param == "in-process":
        yield None
        return
    redis = Redis.from_url(CACHE_REDIS)
    await redis.flushdb()
    await redis.aclose()
    yield CACHE_REDIS


@asynccontextmanager
async def cache_app(
    make_settings: SettingsFactory, redis_url: str | None, **overrides: object
) -> AsyncIterator[tuple[AsyncClient, FakeLLMServer]]:
    async with serve_fake_openai() as fake:
        # A generous Redis timeout: a lookup that times out on a loaded machine is a miss,
        # which these tests would take for a bug.
        settings = make_settings(
            agents_module=AGENTS,
            openai_base_url=fake.base_url,
            redis_url=redis_url,
            **{"redis_timeout_s": 1.0, **overrides},
        )
        async with running_app(settings) as client:
            yield client, fake


async def run(
    client: AsyncClient, agent: str, text: str = "What is 17*23?", headers: dict[str, str] = ALICE
) -> dict[str, object]:
    response = await client.post("/agent", json={"agent": agent, "input": text}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def trace(client: AsyncClient, body: dict[str, object]) -> list[dict[str, object]]:
    response = await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)
    calls: list[dict[str, object]] = response.json()["llm_calls"]
    return calls


def cache_metric(result: str) -> float:
    return REGISTRY.get_sample_value("agentsvc_prompt_cache_total", {"result": result}) or 0.0


def llm_hits() -> float:
    labels = {"provider": "openai", "model": "gpt-4o-mini", "outcome": "cache_hit"}
    return REGISTRY.get_sample_value("agentsvc_llm_calls_total", labels) or 0.0


async def test_repeated_deterministic_run_is_answered_from_the_cache_for_free(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with cache_app(make_settings, redis_url) as (client, fake):
        fake.enqueue(
            ToolCallReply("calculator", {"expression": "17*23"}, usage=Usage(input_tokens=900)),
            TextReply("17*23 is 391.", usage=Usage(input_tokens=1000, output_tokens=8)),
        )
        hits, misses, answered = cache_metric("hit"), cache_metric("miss"), llm_hits()
        first = await run(client, "cached")
        second = await run(client, "cached")

        assert len(fake.requests) == 2  # the second run never reached the model
        assert first["result"] == second["result"] == {"output": "17*23 is 391."}
        assert first["usage"]["cost_usd"] > 0  # type: ignore[index]
        assert second["usage"] == {
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
            "cost_usd": 0.0,
            "llm_calls": 2,
            "tool_calls": 1,  # tools still run: only model answers are cached
        }
        assert [c["cache_hit"] for c in await trace(client, first)] == [False, False]
        calls = await trace(client, second)
        assert [c["cache_hit"] for c in calls] == [True, True]
        assert [c["cost_usd"] for c in calls] == [0.0, 0.0]
        assert calls[1]["response"]["message"]["content"] == "17*23 is 391."  # type: ignore[index]
        assert (cache_metric("hit") - hits, cache_metric("miss") - misses) == (2, 2)
        assert llm_hits() - answered == 2


@pytest.mark.parametrize("agent", ["default-temperature", "warm"])
async def test_non_deterministic_calls_are_never_cached(
    make_settings: SettingsFactory, redis_url: str | None, agent: str
) -> None:
    async with cache_app(make_settings, redis_url) as (client, fake):
        skips = cache_metric("skip")
        bodies = [await run(client, agent), await run(client, agent)]
        assert len(fake.requests) == 2
        for body in bodies:
            assert [c["cache_hit"] for c in await trace(client, body)] == [False]
        assert cache_metric("skip") - skips == 2


async def test_a_user_never_gets_another_users_answer_unless_the_agent_shares(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with cache_app(make_settings, redis_url) as (client, fake):
        fake.enqueue(TextReply("for alice"), TextReply("for bob"))
        assert (await run(client, "cached"))["result"] == {"output": "for alice"}
        assert (await run(client, "cached", headers=BOB))["result"] == {"output": "for bob"}
        assert len(fake.requests) == 2

        fake.enqueue(TextReply("for everyone"))
        await run(client, "shared")
        shared = await run(client, "shared", headers=BOB)
        assert shared["result"] == {"output": "for everyone"}
        assert len(fake.requests) == 3


async def test_answers_expire_after_the_ttl_and_ttl_zero_turns_caching_off(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    # A TTL long enough that the entry is still there when looked at on a loaded host.
    async with cache_app(make_settings, redis_url, prompt_cache_ttl_s=1.0) as (client, fake):
        await run(client, "cached")
        if redis_url is not None:
            redis = Redis.from_url(redis_url)
            try:
                (key,) = await redis.keys("agentsvc:pcache:*")
                assert 0 < await redis.pttl(key) <= 1000
            finally:
                await redis.aclose()
        await asyncio.sleep(1.2)
        second = await run(client, "cached")
        assert [c["cache_hit"] for c in await trace(client, second)] == [False]
        assert len(fake.requests) == 2

        lookups = sum(cache_metric(r) for r in ("hit", "miss", "skip", "error"))
        await run(client, "uncached")
        await run(client, "uncached")
        assert len(fake.requests) == 4
        assert sum(cache_metric(r) for r in ("hit", "miss", "skip", "error")) == lookups


async def test_a_hit_streams_its_text_and_says_so(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with cache_app(make_settings, redis_url) as (client, fake):
        fake.enqueue(TextReply("Streamed once, served twice."))
        streams = []
        for _ in range(2):
            body = {"agent": "cached", "input": "Say something."}
            async with client.stream("POST", "/agent/stream", json=body, headers=ALICE) as resp:
                assert resp.status_code == 200
                streams.append(await collect(resp))
        assert len(fake.requests) == 1
        for events, hit in zip(streams, (False, True), strict=True):
            text = "".join(str(e.json()["text"]) for e in events if e.event == "llm.delta")
            assert text == "Streamed once, served twice."
            (call,) = [e.json() for e in events if e.event == "llm.call"]
            assert call["cache_hit"] is hit
            assert events[-1].event == "run.completed"


async def test_a_hit_consumes_no_budget(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    # 9,000 of 10,000 tokens used: a real call reserves its worst case (over 1,024 output
    # tokens alone) and is refused; a hit never reaches the budget.
    big = Usage(input_tokens=9000, output_tokens=0)
    async with cache_app(make_settings, redis_url, default_token_budget=10_000) as (client, fake):
        fake.enqueue(TextReply("expensive", usage=big))
        await run(client, "cached")
        used = (await client.get("/agent/usage", headers=ALICE)).json()["used_tokens"]
        assert used == 9000

        again = await run(client, "cached")
        assert again["status"] == "completed"
        assert again["result"] == {"output": "expensive"}
        assert (await client.get("/agent/usage", headers=ALICE)).json()["used_tokens"] == used

        refused = await run(client, "cached", text="Something new.")
        assert refused["status"] == "failed"
        assert refused["error"]["type"] == "budget_exceeded"  # type: ignore[index]
        assert len(fake.requests) == 1


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_redis_skips_the_cache_without_hanging(
    make_settings: SettingsFactory,
) -> None:
    dead = f"redis://127.0.0.1:{unused_port()}/13"
    async with cache_app(make_settings, dead, sync_timeout_s=30) as (client, fake):
        errors = cache_metric("error")
        bodies = [await run(client, "cached"), await run(client, "cached")]
        assert [b["status"] for b in bodies] == ["completed", "completed"]
        assert len(fake.requests) == 2
        assert cache_metric("error") - errors == 2


async def test_provider_cached_tokens_pass_through_at_the_cached_rate(
    make_settings: SettingsFactory,
) -> None:
    usage = Usage(input_tokens=2000, output_tokens=100, cached_tokens=1500)
    async with cache_app(make_settings, None) as (client, fake):
        fake.enqueue(TextReply("cheap", usage=usage))
        body = await run(client, "default-temperature")
        (call,) = await trace(client, body)
    price = PRICES["gpt-4o-mini"]
    expected = (500 * price.input + 1500 * price.cached_input + 100 * price.output) / 1_000_000
    assert (call["input_tokens"], call["cached_tokens"]) == (2000, 1500)
    assert call["cost_usd"] == pytest.approx(expected)
    assert body["usage"]["cached_tokens"] == 1500  # type: ignore[index]
    assert body["usage"]["cost_usd"] == pytest.approx(expected)  # type: ignore[index]
