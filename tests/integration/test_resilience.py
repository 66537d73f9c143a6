"""Retries, circuit breakers and fallback chains through the service, against a loopback
model server. SQLite runs with the in-process breakers, PostgreSQL with the Redis ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as redis
from httpx import AsyncClient
from prometheus_client import REGISTRY

from app.bus.breakers import LocalBreakerStore, RedisBreakerStore
from app.llm.breaker import BreakerPolicy, BreakerStore, Change, Verdict
from app.settings import Settings
from tests.conftest import ALICE, API_KEYS, ROOT, SettingsFactory
from tests.fakes.llm_server import (
    ErrorReply,
    FakeLLMServer,
    TextReply,
    ToolCallReply,
    serve_fake_openai,
)
from tests.support.app import running_app

TEST_REDIS = "redis://127.0.0.1:6379/11"
AGENTS = "tests.support.resilience_agents"
JsonObject = dict[str, object]


async def flush_test_redis() -> None:
    client = redis.Redis.from_url(TEST_REDIS)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_openai() as server:
        yield server


@pytest.fixture
async def settings(
    make_settings: SettingsFactory, db_url: str, fake: FakeLLMServer
) -> SettingsFactory:
    """Fast retries against the fake model; Redis breakers on PostgreSQL."""
    shared = not db_url.startswith("sqlite")
    if shared:
        await flush_test_redis()

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "openai_base_url": fake.base_url,
            "agents_module": AGENTS,
            "default_model": "openai/primary",
            "redis_url": TEST_REDIS if shared else None,
            "retry_wait_initial_s": 0.01,
            "retry_wait_max_s": 2.0,
        }
        return make_settings(**(values | overrides))

    return make


async def run(client: AsyncClient, agent: str, text: str = "hello") -> JsonObject:
    response = await client.post("/agent", json={"agent": agent, "input": text}, headers=ALICE)
    assert response.status_code == 200, response.text
    body: JsonObject = response.json()
    return body


async def trace(client: AsyncClient, job: object) -> JsonObject:
    body: JsonObject = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
    return body


async def events(client: AsyncClient, job: object) -> list[JsonObject]:
    """The run's events, replayed from its log (the run has ended)."""
    response = await client.get(f"/agent/stream/{job}", headers=ALICE)
    lines = response.text.splitlines()
    return [orjson.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]


def models_asked(fake: FakeLLMServer) -> list[object]:
    return [r["model"] for r in fake.requests]


def error_of(body: JsonObject) -> JsonObject:
    assert body["status"] == "failed", body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "llm_unavailable"
    return error


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_429_with_retry_after_and_503_are_retried_until_the_answer(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(
        ErrorReply(429, "slow down", headers={"Retry-After": "0.3"}),
        ErrorReply(503, "busy"),
        TextReply("made it"),
    )
    limited = metric(
        "agentsvc_llm_retries_total", provider="openai", model="primary", reason="rate_limited"
    )
    async with running_app(settings(llm_retry_attempts=3)) as client:
        started = time.monotonic()
        body = await run(client, "assistant")
        waited = time.monotonic() - started
        calls = (await trace(client, body["job_id"]))["llm_calls"]

    assert body["status"] == "completed"
    assert body["result"] == {"output": "made it"}
    assert len(fake.requests) == 3
    assert waited >= 0.3 - 0.01  # Retry-After honoured (a sleep never ends early)
    assert isinstance(calls, list)
    (call,) = calls
    assert call["response"]["attempts"] == 3
    assert call["model"] == "primary"
    after = metric(
        "agentsvc_llm_retries_total", provider="openai", model="primary", reason="rate_limited"
    )
    assert after - limited == 1


async def test_bad_request_is_not_retried(settings: SettingsFactory, fake: FakeLLMServer) -> None:
    fake.enqueue(ErrorReply(400, "no such parameter"), TextReply("never"))
    async with running_app(settings(llm_retry_attempts=5)) as client:
        body = await run(client, "assistant")
    error = error_of(body)
    assert "ProviderBadRequest" in str(error["message"])
    assert len(fake.requests) == 1


async def test_retries_stop_at_the_attempt_cap(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(*[ErrorReply(503, "busy")] * 6)
    async with running_app(settings(llm_retry_attempts=3)) as client:
        body = await run(client, "assistant")
    message = str(error_of(body)["message"])
    assert "ProviderServerError" in message
    assert "after 3 attempts" in message
    assert len(fake.requests) == 3


async def test_retries_stop_at_the_elapsed_time_cap(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(*[ErrorReply(429, "slow", headers={"Retry-After": "0.3"})] * 50)
    rules = settings(llm_retry_attempts=50, llm_retry_max_s=1.0)
    async with running_app(rules) as client:
        body = await run(client, "assistant")
    assert "ProviderRateLimited" in str(error_of(body)["message"])
    # Each retry waits at least 0.3 s and none may start past 1 s: at most 4 calls, not 50.
    assert 1 <= len(fake.requests) <= 4


async def test_fallback_model_serves_when_the_primary_retries_are_spent(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(503, "down"), ErrorReply(503, "down"), TextReply("backup here"))
    served = metric("agentsvc_fallbacks_total", agent="sturdy", to="openai/backup")
    async with running_app(settings(llm_retry_attempts=2)) as client:
        body = await run(client, "sturdy")
        calls = (await trace(client, body["job_id"]))["llm_calls"]
        llm_events = [e for e in await events(client, body["job_id"]) if e["type"] == "llm.call"]

    assert body["status"] == "completed"
    assert body["result"] == {"output": "backup here"}
    assert body["model"] == "openai/primary"  # what the run asked for
    assert models_asked(fake) == ["primary", "primary", "backup"]
    assert isinstance(calls, list)
    (call,) = calls
    assert (call["provider"], call["model"]) == ("openai", "backup")
    assert call["response"]["served_by"] == "openai/backup"
    assert call["response"]["attempts"] == 3
    assert [(e["provider"], e["model"]) for e in llm_events] == [("openai", "backup")]
    assert metric("agentsvc_fallbacks_total", agent="sturdy", to="openai/backup") - served == 1


async def test_open_breaker_sends_the_next_run_straight_to_the_next_link(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(503, "down"), TextReply("first"), TextReply("second"))
    rules = settings(llm_retry_attempts=1, breaker_failure_threshold=1)
    async with running_app(rules) as client:
        first = await run(client, "sturdy")
        second = await run(client, "sturdy")
        breakers = (await client.get("/agent/admin/breakers", headers=ROOT)).json()

    assert (first["result"], second["result"]) == ({"output": "first"}, {"output": "second"})
    assert models_asked(fake) == ["primary", "backup", "backup"]  # no call to the open one
    states = {b["target"]: b["state"] for b in breakers["breakers"]}
    assert states["llm:openai/primary"] == "open"
    assert states["llm:openai/backup"] == "closed"
    assert breakers["shared"] is (rules.redis_url is not None)


async def test_fallback_agent_carries_the_run_on_with_its_instructions_and_tools(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(
        ErrorReply(503, "primary down"),
        ErrorReply(500, "backup down"),
        ToolCallReply("lookup", {"key": "k"}),
        TextReply("plain answer"),
    )
    plain = metric("agentsvc_fallbacks_total", agent="sturdy", to="agent:plain")
    async with running_app(settings(llm_retry_attempts=1)) as client:
        body = await run(client, "sturdy")
        calls = (await trace(client, body["job_id"]))["llm_calls"]

    assert body["result"] == {"output": "plain answer"}
    # The agent link answers the rest of the run: the second turn goes straight to it.
    assert models_asked(fake) == ["primary", "backup", "simple", "simple"]
    asked = fake.requests[2]
    messages = asked["messages"]
    assert isinstance(messages, list)
    assert messages[0] == {"role": "system", "content": "Answer plainly."}
    tools = asked["tools"]
    assert isinstance(tools, list)
    assert [t["function"]["name"] for t in tools] == ["lookup"]  # sturdy's ∩ plain's
    assert isinstance(calls, list)
    assert [(c["model"], c["response"]["served_by"]) for c in calls] == [
        ("simple", "openai/simple"),
        ("simple", "openai/simple"),
    ]
    assert metric("agentsvc_fallbacks_total", agent="sturdy", to="agent:plain") - plain == 2


async def test_exhausted_chain_fails_with_every_link_then_fails_fast(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(503, "a down"), ErrorReply(502, "b down"), ErrorReply(429, "c busy"))
    rules = settings(llm_retry_attempts=1, breaker_failure_threshold=1)
    async with running_app(rules) as client:
        first = error_of(await run(client, "sturdy"))
        second = error_of(await run(client, "sturdy"))

    message = str(first["message"])
    assert message.startswith("no model of the fallback chain could answer: ")
    assert "openai/primary: ProviderServerError: openai answered 503: a down" in message
    assert "openai/backup: ProviderServerError: openai answered 502: b down" in message
    assert "agent:plain: ProviderRateLimited: openai answered 429: c busy" in message
    # Every breaker is open now: the next run ends at once, no call reaches the server.
    assert len(fake.requests) == 3
    assert str(second["message"]).count("circuit breaker open") == 3


async def test_idempotent_tool_is_retried_non_idempotent_is_not(
    settings: SettingsFactory, fake: FakeLLMServer, tmp_path: Path
) -> None:
    fake.enqueue(
        ToolCallReply("lookup", {"key": "a", "fail_first": 1}, call_id="c1"),
        ToolCallReply("post", {"key": "b", "fail_first": 1}, call_id="c2"),
        TextReply("done"),
    )
    async with running_app(settings(tool_retry_attempts=3)) as client:
        body = await run(client, "tooler")
        tools = (await trace(client, body["job_id"]))["tool_calls"]

    assert body["status"] == "completed"
    assert isinstance(tools, list)
    assert [(t["name"], t["status"]) for t in tools] == [("lookup", "ok"), ("post", "error")]
    assert tools[0]["result"] == "lookup a ok"
    assert "post backend refused the connection" in tools[1]["result"]
    sandbox = tmp_path / "sandbox"
    assert (sandbox / "lookup.log").read_text().splitlines() == ["a", "a"]
    assert (sandbox / "post.log").read_text().splitlines() == ["b"]


async def test_open_tool_breaker_answers_the_model_without_running_the_tool(
    settings: SettingsFactory, fake: FakeLLMServer, tmp_path: Path
) -> None:
    fake.enqueue(
        *[ToolCallReply("post", {"key": "x", "fail_first": 99}, call_id=f"c{i}") for i in range(3)],
        TextReply("gave up"),
    )
    async with running_app(settings(breaker_failure_threshold=2)) as client:
        body = await run(client, "tooler")
        tools = (await trace(client, body["job_id"]))["tool_calls"]
        listed = await client.get("/agent/admin/breakers", headers=ROOT)
        refused = await client.get("/agent/admin/breakers", headers=ALICE)

    assert body["result"] == {"output": "gave up"}
    assert isinstance(tools, list)
    assert "post is not available now: circuit breaker open" in tools[2]["result"]
    assert (tmp_path / "sandbox" / "post.log").read_text().splitlines() == ["x", "x"]
    assert listed.status_code == 200
    states = {b["target"]: b for b in listed.json()["breakers"]}
    assert states["tool:post"]["state"] == "open"
    assert states["tool:post"]["retry_in_s"] > 0
    assert states["tool:lookup"]["state"] == "closed"
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"


async def test_breaker_state_is_in_the_metrics(
    settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(503, "down"), TextReply("from backup"))
    opened = metric("agentsvc_breaker_transitions_total", target="llm:openai/primary", state="open")
    async with running_app(settings(llm_retry_attempts=1, breaker_failure_threshold=1)) as client:
        await run(client, "sturdy")
        exported = (await client.get("/metrics")).text

    assert 'agentsvc_breaker_state{target="llm:openai/primary"} 2.0' in exported
    after = metric("agentsvc_breaker_transitions_total", target="llm:openai/primary", state="open")
    assert after - opened == 1


@pytest.mark.postgres
async def test_two_apps_share_breakers_through_redis(
    pg_url: str, fake: FakeLLMServer, tmp_path: Path
) -> None:
    """Two app instances, each with its own Redis client: one opens, the other fails fast;
    a third with no cool-down probes, and its success closes the breaker for all."""
    await flush_test_redis()

    def app_settings(cooldown_s: float) -> Settings:
        values: dict[str, object] = {
            "database_url": pg_url,
            "api_keys": API_KEYS,
            "sandbox_dir": tmp_path / "sandbox",
            "openai_base_url": fake.base_url,
            "default_model": "openai/primary",
            "redis_url": TEST_REDIS,
            "llm_retry_attempts": 1,
            "breaker_failure_threshold": 2,
            "breaker_cooldown_s": cooldown_s,
        }
        return Settings.model_validate(values)

    fake.enqueue(ErrorReply(503, "down"), ErrorReply(503, "down"), TextReply("probe ok"))
    async with running_app(app_settings(60)) as a, running_app(app_settings(60)) as b:
        for _ in range(2):
            error_of(await run(a, "assistant"))
        refused = error_of(await run(b, "assistant"))
        assert "circuit breaker open" in str(refused["message"])
        assert len(fake.requests) == 2  # b never called the model
        async with running_app(app_settings(0)) as c:
            assert (await run(c, "assistant"))["result"] == {"output": "probe ok"}
        assert (await run(b, "assistant"))["status"] == "completed"
        listed = (await b.get("/agent/admin/breakers", headers=ROOT)).json()
    states = {x["target"]: x["state"] for x in listed["breakers"]}
    assert states["llm:openai/primary"] == "closed"
    assert listed["shared"] is True
    assert len(fake.requests) == 4


async def test_redis_unreachable_breakers_work_per_process_without_hanging(
    make_settings: SettingsFactory, fake: FakeLLMServer
) -> None:
    """Redis accepts connections but never answers: each call waits at most the client's
    short timeout once, then this process's own breakers take over."""
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    fake.enqueue(ErrorReply(503, "down"), TextReply("backup"), TextReply("backup again"))
    rules = make_settings(
        openai_base_url=fake.base_url,
        agents_module=AGENTS,
        redis_url=f"redis://127.0.0.1:{port}/11",
        llm_retry_attempts=1,
        breaker_failure_threshold=1,
    )
    async with silent:
        async with asyncio.timeout(30), running_app(rules) as client:
            first = await run(client, "sturdy")
            second = await run(client, "sturdy")
            listed = (await client.get("/agent/admin/breakers", headers=ROOT)).json()
        silent.close()
    assert first["result"] == {"output": "backup"}
    assert second["result"] == {"output": "backup again"}
    assert models_asked(fake) == ["primary", "backup", "backup"]  # opened in this process
    assert listed["shared"] is False


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up and closes
    writer.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _breaker_scenario(store: BreakerStore, clock: _Clock) -> list[object]:
    """Every transition of one breaker, step by step, as the store answers them."""
    policy = BreakerPolicy(failure_threshold=3, window_s=10, cooldown_s=5, half_open_probes=2)
    target = "llm:contract/model"
    seen: list[object] = []

    async def step(action: str, advance: float = 0.0) -> None:
        clock.now += advance
        if action == "admit":
            seen.append(await store.admit(target, policy))
        elif action == "fail":
            seen.append(await store.fail(target, policy))
        elif action == "succeed":
            seen.append(await store.succeed(target, policy))
        else:
            seen.append((await store.snapshot(policy)).breakers)

    for action, advance in [
        ("fail", 0), ("fail", 1), ("fail", 10.5), ("peek", 0),  # the first two left the window
        ("fail", 1), ("fail", 1), ("admit", 0), ("peek", 1),  # opened at the third; 4 s left
        ("fail", 2), ("admit", 4), ("admit", 1),  # a late failure extended it; then a probe
        ("admit", 0), ("admit", 0), ("succeed", 0), ("admit", 0),  # 2 probes, the 3rd waits
        ("fail", 0), ("fail", 0), ("fail", 0), ("admit", 5), ("fail", 1),  # probe fails
        ("admit", 4), ("peek", 0), ("admit", 1), ("admit", 0), ("admit", 0), ("admit", 5),
    ]:  # fmt: skip
        await step(action, advance)
    return seen


async def test_redis_scripts_follow_the_in_process_rules() -> None:
    """The Lua scripts and `BreakerRecord` give the same answer at every step."""
    await flush_test_redis()
    local_clock, redis_clock = _Clock(), _Clock()
    client = redis.Redis.from_url(TEST_REDIS)
    try:
        shared = RedisBreakerStore(client, fallback=LocalBreakerStore(), clock=redis_clock)
        from_redis = await _breaker_scenario(shared, redis_clock)
        ttls = [await client.pttl(key) async for key in client.scan_iter("agentsvc:breaker:*")]
    finally:
        await client.aclose()
    from_local = await _breaker_scenario(LocalBreakerStore(local_clock), local_clock)

    assert from_redis == from_local
    assert ttls
    assert all(ttl > 0 for ttl in ttls)  # idle breakers are forgotten
    states = [getattr(s, "state", None) for s in from_local]
    assert states[:5] == ["closed", "closed", "closed", None, "closed"]
    assert from_local[5] == Change("open", True)
    assert from_local[6] == Verdict(False, False, "open", False, 5.0)
    assert from_local[8] == Change("open", False)  # a late failure extends the open period
    assert from_local[9] == Verdict(False, False, "open", False, 1.0)
    assert from_local[10] == Verdict(True, True, "half_open", True)
    assert from_local[12] == Verdict(False, False, "half_open", False, 5.0)
    assert from_local[13] == Change("closed", True)
    assert from_local[17] == Change("open", True)
    assert from_local[19] == Change("open", True)  # the probe failed: open again
    assert from_local[20] == Verdict(False, False, "open", False, 1.0)
    assert from_local[25] == Verdict(True, True, "half_open", False)  # stale probes freed
