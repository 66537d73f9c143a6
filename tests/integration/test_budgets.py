"""Token budgets over HTTP on SQLite and PostgreSQL, each with real Redis (db 10) and with
the in-process ledger: the concurrent race, 429 after exhaustion, the usage route,
overrides (admin route, replicas, CLI), per-run caps, and Redis unreachable."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as redis
from httpx import AsyncClient, Response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from app.bus.budgets import Hold, InProcessBudgetLedger, RedisBudgetLedger
from app.bus.writes import RedisWrites
from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.fakes.llm_server import TextReply, ToolCallReply, Usage, serve_fake_openai
from tests.fakes.loopback import serve_app
from tests.fakes.tcp_proxy import tcp_proxy
from tests.integration.test_cli import agentsvc, cli_env
from tests.support.app import running_app
from tests.support.cost import (
    TEST_REDIS,
    closed_port,
    flush_test_redis,
    make_settings,
    metric,
    redis_url,
)
from tests.support.polling import until

__all__ = ["make_settings", "redis_url"]  # fixtures

AGENTS = "tests.support.budget_agents"
PROBLEM = "application/problem+json"


async def usage_of(client: AsyncClient, headers: dict[str, str]) -> dict[str, object]:
    response = await client.get("/agent/usage", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@dataclass
class GateModel:
    """An OpenAI-compatible model that holds every answer until `release` is set. Answers
    report `input_tokens` and the request's whole `max_completion_tokens`; with `tool_first`
    the first answer of a run calls the calculator."""

    input_tokens: int = 1
    tool_first: bool = False
    arrived: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])

    async def _complete(self, request: Request) -> StarletteResponse:
        body = orjson.loads(await request.body())
        self.arrived += 1
        await self.release.wait()
        output = int(body.get("max_completion_tokens") or 10)
        message: dict[str, object] = {"role": "assistant", "content": "ok"}
        if self.tool_first and not any(m["role"] == "tool" for m in body["messages"]):
            call = {"name": "calculator", "arguments": '{"expression": "2+2"}'}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": call}],
            }
        payload = {
            "id": "gate",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": output},
        }
        return StarletteResponse(orjson.dumps(payload), media_type="application/json")


@pytest.mark.parametrize("ledger_kind", ["memory", "redis"])
async def test_ledgers_reserve_settle_and_lapse_alike(ledger_kind: str) -> None:
    await flush_test_redis()
    client = redis.Redis.from_url(TEST_REDIS, socket_timeout=1)
    writes = RedisWrites(client, deadline_s=2)
    ledger = (
        InProcessBudgetLedger()
        if ledger_kind == "memory"
        else RedisBudgetLedger(client, writes, deadline_s=2)
    )
    now = time.time()

    async def reserve(tokens: int, limit: int | None = 1000) -> Hold | None:
        hold = Hold(user_id="u", window_start=0, tokens=tokens, expire_at=int(now) + 3600)
        reservation = await ledger.reserve(hold, limit=limit, now=now, lapse_at=now + 60)
        return hold if reservation.granted else None

    async def read(at: float = now) -> tuple[int, int, float, int | None]:
        u = await ledger.read(user_id="u", window_start=0, now=at)
        return (u.used_tokens, u.reserved_tokens, u.cost_usd, u.exhausted_at)

    try:
        first = await reserve(600)
        assert first is not None
        assert await reserve(600) is None  # fits only without the call in flight
        assert await read() == (0, 600, 0.0, None)
        await ledger.settle(first, tokens=300, cost_usd=0.25)
        assert await read() == (300, 0, 0.25, None)
        assert await reserve(800) is None  # could never fit: the window is exhausted
        assert (await read())[3] == 1000
        assert await reserve(700) is not None
        assert await read() == (300, 700, 0.25, 1000)
        assert (await read(now + 61))[1] == 0  # a hold whose process died lapses
        unlimited = await reserve(10**9, limit=None)
        assert unlimited is not None
        await ledger.settle(unlimited, tokens=5, cost_usd=0.0)
        assert (await read(now + 61))[:2] == (305, 0)
    finally:
        await client.aclose()


async def test_fifty_concurrent_runs_overshoot_by_at_most_one_reservation(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    gate = GateModel()
    budget = 5500  # about five reservations of "frugal" (1000 output + a short prompt)
    async with serve_app(gate.app()) as model_url:
        settings = make_settings(
            agents_module=AGENTS,
            openai_base_url=f"{model_url}/v1",
            redis_url=redis_url,
            default_token_budget=budget,
            sync_timeout_s=60,
        )
        async with running_app(settings) as client:
            runs = [
                asyncio.create_task(
                    client.post("/agent", json={"agent": "frugal", "input": "hi"}, headers=ALICE)
                )
                for _ in range(50)
            ]

            async def all_decided() -> bool:
                # Each run holds its reservation at the gate, or was refused and answered.
                return gate.arrived + sum(t.done() for t in runs) == 50

            await until(all_decided, "every run to reserve or be refused")
            held = await usage_of(client, ALICE)
            gate.release.set()
            answers = [r.json() for r in await asyncio.gather(*runs)]
            final = await usage_of(client, ALICE)

    in_flight = gate.arrived
    reserved = held["reserved_tokens"]
    assert isinstance(reserved, int)
    one = reserved // in_flight  # identical runs reserve identical worst cases
    assert reserved == in_flight * one
    # As many calls were let through as the budget covers, and not one more.
    assert in_flight * one <= budget < (in_flight + 1) * one
    completed = [a for a in answers if a["status"] == "completed"]
    refused = [a for a in answers if a["status"] == "failed"]
    assert len(completed) == in_flight
    assert len(refused) == 50 - in_flight > 0
    assert {a["error"]["type"] for a in refused} == {"budget_exceeded"}
    used = final["used_tokens"]
    assert isinstance(used, int)
    assert used == in_flight * (1 + 1000)
    assert used <= budget + one
    assert final["reserved_tokens"] == 0


async def test_spent_budget_fails_the_run_with_its_checkpoint_then_new_requests_get_429(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with serve_fake_openai() as fake:
        # The first call uses 4,500 of 5,000 tokens: the second call's worst case cannot fit.
        fake.enqueue(
            ToolCallReply(
                "calculator",
                {"expression": "17*23"},
                usage=Usage(input_tokens=4500, output_tokens=0),
            )
        )
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=fake.base_url,
            redis_url=redis_url,
            default_token_budget=5000,
        )
        async with running_app(settings) as client:
            rejected_before = metric("agentsvc_budget_rejections_total", reason="request")
            run = await client.post(
                "/agent", json={"agent": "assistant", "input": "What is 17*23?"}, headers=ALICE
            )
            body = run.json()
            assert body["status"] == "failed"
            assert body["error"]["type"] == "budget_exceeded"
            assert "4500 used" in body["error"]["message"]
            assert body["usage"]["tool_calls"] == 1
            assert body["usage"]["input_tokens"] == 4500
            assert len(fake.requests) == 1
            trace = (await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)).json()
            assert trace["tool_calls"][0]["result"] == "391"  # the partial checkpoint is kept
            assert "budget" in trace["llm_calls"][-1]["error"]

            usage = await usage_of(client, ALICE)
            assert usage["exhausted"] is True
            reset_at = datetime.fromisoformat(str(usage["window"]["reset_at"]))  # type: ignore[index]
            session = await client.post(
                "/agent/sessions", json={"agent": "assistant"}, headers=ALICE
            )
            new_runs: list[Response] = [
                await client.post(path, json={"agent": "assistant", "input": "hi"}, headers=ALICE)
                for path in ("/agent", "/agent/submit", "/agent/stream")
            ]
            new_runs.append(
                await client.post(
                    f"/agent/sessions/{session.json()['session_id']}/messages",
                    json={"input": "hi"},
                    headers=ALICE,
                )
            )
            for refused in new_runs:
                assert refused.status_code == 429, refused.text
                assert refused.headers["content-type"] == PROBLEM
                assert refused.json()["type"] == "budget_exceeded"
                retry_after = int(refused.headers["Retry-After"])
                assert 1 <= retry_after <= 86400
                expected = (reset_at - datetime.now(UTC)).total_seconds()
                assert abs(retry_after - expected) <= 5
            assert metric("agentsvc_budget_rejections_total", reason="request") == (
                rejected_before + 4
            )
            other = await client.post(
                "/agent", json={"agent": "assistant", "input": "hi"}, headers=BOB
            )
            assert other.json()["status"] == "completed"


async def test_usage_route_shows_the_window_tokens_cost_and_budget(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(TextReply("hi", usage=Usage(input_tokens=1000, output_tokens=200)))
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=fake.base_url,
            redis_url=redis_url,
            default_token_budget=100_000,
        )
        async with running_app(settings) as client:
            before = await usage_of(client, ALICE)
            assert before["user"] == "alice"
            assert before["budget_tokens"] == 100_000
            assert before["budget_source"] == "default"
            assert (before["used_tokens"], before["reserved_tokens"]) == (0, 0)
            assert before["remaining_tokens"] == 100_000
            window = before["window"]
            assert isinstance(window, dict)
            assert window["seconds"] == 86400
            start = datetime.fromisoformat(window["start"])
            assert (start.hour, start.minute, start.utcoffset()) == (
                0,
                0,
                datetime.now(UTC).utcoffset(),
            )
            run = await client.post(
                "/agent", json={"agent": "assistant", "input": "hello"}, headers=ALICE
            )
            assert run.json()["status"] == "completed"
            after = await usage_of(client, ALICE)
            assert after["used_tokens"] == 1200
            assert after["reserved_tokens"] == 0
            assert after["remaining_tokens"] == 98_800
            # gpt-4o-mini: $0.15 / M input, $0.60 / M output.
            assert after["cost_usd"] == pytest.approx(0.00027)
            assert after["exhausted"] is False
            assert (await usage_of(client, BOB))["used_tokens"] == 0
            assert (await client.get("/agent/usage")).status_code == 401


async def test_without_a_budget_usage_is_counted_and_nothing_refused(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with running_app(make_settings(redis_url=redis_url)) as client:
        run = await client.post(
            "/agent", json={"agent": "assistant", "input": "What is 2+2?"}, headers=ALICE
        )
        body = run.json()
        usage = await usage_of(client, ALICE)
        assert usage["budget_tokens"] is None
        assert usage["remaining_tokens"] is None
        total = body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
        assert usage["used_tokens"] == total > 0


async def test_admin_override_applies_at_once_and_only_admins_set_it(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    settings = make_settings(redis_url=redis_url, default_token_budget=100_000)
    run = {"agent": "assistant", "input": "What is 2+2?"}
    async with running_app(settings) as client:
        path = "/agent/admin/budgets/alice"
        assert (
            await client.put(path, json={"tokens_per_window": 0}, headers=ALICE)
        ).status_code == 403
        assert (await client.get(path, headers=BOB)).status_code == 403

        zero = await client.put(path, json={"tokens_per_window": 0}, headers=ROOT)
        assert zero.status_code == 200
        assert zero.json()["budget_tokens"] == 0
        assert zero.json()["budget_source"] == "override"
        assert zero.json()["override"]["updated_by"] == "root"
        refused = await client.post("/agent", json=run, headers=ALICE)
        assert refused.status_code == 429  # 0 means 0, not the default
        assert (await client.post("/agent", json=run, headers=BOB)).status_code == 200
        assert (await client.get(path, headers=ROOT)).json()["budget_tokens"] == 0

        unlimited = await client.put(path, json={"tokens_per_window": None}, headers=ROOT)
        assert unlimited.json()["budget_tokens"] is None
        assert (await client.post("/agent", json=run, headers=ALICE)).status_code == 200
        for bad in ({"tokens_per_window": -1}, {}, {"tokens_per_window": 5, "x": 1}):
            assert (await client.put(path, json=bad, headers=ROOT)).status_code == 422

        back = await client.delete(path, headers=ROOT)
        assert back.json()["budget_source"] == "default"
        assert back.json()["budget_tokens"] == 100_000
        assert back.json()["override"] is None
        assert (await client.delete(path, headers=ROOT)).status_code == 404


async def test_override_set_on_one_replica_reaches_another_within_seconds(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(redis_url=TEST_REDIS)
    run = {"agent": "assistant", "input": "What is 2+2?"}
    async with running_app(settings) as first, running_app(settings) as second:
        # The second replica has read (and cached) alice's budget: unlimited.
        assert (await second.post("/agent", json=run, headers=ALICE)).status_code == 200
        put = await first.put(
            "/agent/admin/budgets/alice", json={"tokens_per_window": 0}, headers=ROOT
        )
        assert put.status_code == 200

        async def applied() -> bool:
            return (await usage_of(second, ALICE))["budget_tokens"] == 0

        await until(applied, "the override to reach the second replica", timeout_s=15)
        assert (await second.post("/agent", json=run, headers=ALICE)).status_code == 429


async def test_cli_sets_and_clears_a_budget(
    make_settings: SettingsFactory, db_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, AGENTSVC_DATABASE_URL=db_url)
    run = {"agent": "assistant", "input": "What is 2+2?"}

    async def cli(*args: str) -> tuple[int, str]:
        done = await asyncio.to_thread(agentsvc, "budgets", *args, env=env)
        return done.returncode, done.stdout + done.stderr

    assert await cli("set", "--user", "alice", "--tokens", "0") == (
        0,
        "alice: 0 tokens per window\n",
    )
    async with running_app(make_settings(default_token_budget=50_000)) as client:
        assert (await client.post("/agent", json=run, headers=ALICE)).status_code == 429
    assert (await cli("set", "--user", "alice", "--unlimited"))[0] == 0
    async with running_app(make_settings(default_token_budget=0)) as client:
        assert (await client.post("/agent", json=run, headers=ALICE)).status_code == 200
        assert (await usage_of(client, ALICE))["budget_tokens"] is None
    assert await cli("clear", "--user", "alice") == (0, "alice: default budget\n")
    async with running_app(make_settings(default_token_budget=0)) as client:
        assert (await client.post("/agent", json=run, headers=ALICE)).status_code == 429
    for bad in (["set", "--user", "alice"], ["set", "--user", "a", "--tokens", "1", "--unlimited"]):
        assert (await cli(*bad))[0] == 2
    assert (await cli("set", "--user", "alice", "--tokens", "-5"))[0] == 2


async def test_run_caps_end_the_run_before_a_call_that_could_pass_them(
    make_settings: SettingsFactory,
) -> None:
    async with serve_fake_openai() as fake:
        # "capped" declares 5,000 tokens per run: after 4,900 the next call cannot fit.
        fake.enqueue(
            ToolCallReply(
                "calculator", {"expression": "6*7"}, usage=Usage(input_tokens=4900, output_tokens=0)
            )
        )
        settings = make_settings(agents_module=AGENTS, openai_base_url=fake.base_url)
        async with running_app(settings) as client:
            catalog = (await client.get("/agent/agents", headers=ALICE)).json()
            (capped,) = [a for a in catalog["agents"] if a["name"] == "capped"]
            assert capped["versions"][0]["max_run_tokens"] == 5000
            assert capped["versions"][0]["max_run_cost_usd"] == 0.05
            body = (
                await client.post(
                    "/agent", json={"agent": "capped", "input": "6*7?"}, headers=ALICE
                )
            ).json()
            assert body["status"] == "failed"
            assert body["error"]["type"] == "budget_exceeded"
            assert "token cap of 5000" in body["error"]["message"]
            assert body["usage"]["tool_calls"] == 1
            assert len(fake.requests) == 1

        # The service's cap applies when it is lower than the agent's: 0 means no call at all.
        async with running_app(
            make_settings(agents_module=AGENTS, openai_base_url=fake.base_url, max_run_cost_usd=0)
        ) as client:
            body = (
                await client.post(
                    "/agent", json={"agent": "capped", "input": "6*7?"}, headers=ALICE
                )
            ).json()
            assert body["error"]["type"] == "budget_exceeded"
            assert "cost cap of $0" in body["error"]["message"]
            assert len(fake.requests) == 1


async def test_redis_unreachable_fails_closed_by_default_and_open_when_configured(
    make_settings: SettingsFactory,
) -> None:
    dead = f"redis://127.0.0.1:{closed_port()}/10"
    run = {"agent": "assistant", "input": "What is 2+2?"}
    settings = make_settings(redis_url=dead, default_token_budget=100_000)
    async with running_app(settings) as client:
        closed_before = metric("agentsvc_budget_store_errors_total", policy="closed")
        async with asyncio.timeout(30):  # a hang guard, not a timing assertion
            refused = await client.post("/agent", json=run, headers=ALICE)
            assert refused.status_code == 503
            assert refused.json()["type"] == "service_unavailable"
            assert (await client.get("/agent/usage", headers=ALICE)).status_code == 503
            # A user without a budget has nothing to protect: never refused for Redis.
            await client.put(
                "/agent/admin/budgets/bob", json={"tokens_per_window": None}, headers=ROOT
            )
            free = await client.post("/agent", json=run, headers=BOB)
            assert free.json()["status"] == "completed"
        assert metric("agentsvc_budget_store_errors_total", policy="closed") >= closed_before + 2

    open_before = metric("agentsvc_budget_store_errors_total", policy="open")
    async with running_app(
        make_settings(redis_url=dead, default_token_budget=100_000, budget_fail_policy="open")
    ) as client:
        async with asyncio.timeout(30):
            body = (await client.post("/agent", json=run, headers=ALICE)).json()
        assert body["status"] == "completed"
    assert metric("agentsvc_budget_store_errors_total", policy="open") >= open_before + 2


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_redis_lost_mid_run_ends_or_finishes_the_run_without_hanging(
    make_settings: SettingsFactory, policy: str
) -> None:
    gate = GateModel(tool_first=True)
    async with tcp_proxy(6379) as proxy, serve_app(gate.app()) as model_url:
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=f"{model_url}/v1",
            redis_url=f"redis://127.0.0.1:{proxy.port}/10",
            default_token_budget=100_000,
            budget_fail_policy=policy,
        )
        async with running_app(settings) as client:
            call = asyncio.create_task(
                client.post("/agent", json={"agent": "assistant", "input": "2+2"}, headers=ALICE)
            )

            async def first_call_in_flight() -> bool:
                return gate.arrived == 1

            await until(first_call_in_flight, "the first LLM call")
            await proxy.cut()  # Redis goes away while the call is in flight
            gate.release.set()
            async with asyncio.timeout(30):  # a hang guard, not a timing assertion
                body = (await call).json()
    assert body["usage"]["tool_calls"] == 1  # the first call and its tool ran
    if policy == "closed":
        assert body["status"] == "failed"
        assert body["error"]["type"] == "llm_unavailable"
        assert "budget store is unreachable" in body["error"]["message"]
        assert gate.arrived == 1  # the second call was not made
    else:
        assert body["status"] == "completed"
        assert gate.arrived == 2
