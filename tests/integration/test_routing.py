"""Model selection by task complexity through the service: the model called, and the
decision with its reason on the run, its `run.started` event and its trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from httpx import AsyncClient

from tests.conftest import ALICE, SettingsFactory
from tests.fakes.llm_server import FakeLLMServer, serve_fake_openai
from tests.support.app import running_app
from tests.support.sse import collect

AGENTS = "tests.support.cache_agents"
SIMPLE = "What is 17*23?"
COMPLEX = "Implement a JSON parser in Python, then prove it terminates, step by step."


@asynccontextmanager
async def routing_app(
    make_settings: SettingsFactory, **overrides: object
) -> AsyncIterator[tuple[AsyncClient, FakeLLMServer]]:
    async with serve_fake_openai() as fake:
        settings = make_settings(agents_module=AGENTS, openai_base_url=fake.base_url, **overrides)
        async with running_app(settings) as client:
            yield client, fake


async def run(client: AsyncClient, agent: str, text: str) -> dict[str, object]:
    response = await client.post("/agent", json={"agent": agent, "input": text}, headers=ALICE)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def routing_seen(client: AsyncClient, job: str) -> list[object]:
    """The routing decision as GET /agent/status, run.started and the trace show it."""
    status = (await client.get(f"/agent/status/{job}", headers=ALICE)).json()
    async with client.stream("GET", f"/agent/stream/{job}", headers=ALICE) as response:
        started = (await collect(response))[0]
    assert started.event == "run.started"
    trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
    return [status["routing"], started.json().get("routing"), trace["routing"]]


@pytest.mark.parametrize(
    ("text", "tier", "model", "cue"),
    [
        (SIMPLE, "simple", "small-model", "no code, math or multi-step cue"),
        ("Compare these two offers.", "medium", "mid-model", "multi-step ('Compare')"),
        (COMPLEX, "complex", "big-model", "code ('Implement')"),
    ],
)
async def test_the_heuristic_picks_the_tier_and_its_model(
    make_settings: SettingsFactory, text: str, tier: str, model: str, cue: str
) -> None:
    async with routing_app(make_settings) as (client, fake):
        body = await run(client, "routed", text)
        assert body["status"] == "completed"
        assert body["model"] == f"openai/{model}"
        assert [r["model"] for r in fake.requests] == [model]
        routing = body["routing"]
        assert isinstance(routing, dict)
        assert routing["tier"] == tier
        assert routing["reason"].startswith("heuristic: ")
        assert cue in routing["reason"]
        assert await routing_seen(client, str(body["job_id"])) == [routing] * 3
        (call,) = (await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)).json()[
            "llm_calls"
        ]
        assert call["model"] == model


async def test_an_agents_own_classifier_decides(make_settings: SettingsFactory) -> None:
    async with routing_app(make_settings) as (client, fake):
        big = await run(client, "routed-own", "[enterprise] hi")
        small = await run(client, "routed-own", f"[self-service] {COMPLEX}")
        assert [r["model"] for r in fake.requests] == ["big-model", "small-model"]
        assert big["routing"] == {"tier": "complex", "reason": "enterprise customer"}
        assert small["routing"] == {"tier": "simple", "reason": "self-service customer"}
        assert await routing_seen(client, str(small["job_id"])) == [small["routing"]] * 3


async def test_queued_runs_use_the_model_chosen_at_submission(
    make_settings: SettingsFactory,
) -> None:
    async with routing_app(make_settings, poll_interval_s=0.05) as (client, fake):
        response = await client.post(
            "/agent/submit", json={"agent": "routed", "input": COMPLEX}, headers=ALICE
        )
        assert response.status_code == 202
        job = response.json()["job_id"]
        for _ in range(500):
            status = (await client.get(f"/agent/status/{job}", headers=ALICE)).json()
            if status["status"] == "completed":
                break
            await asyncio.sleep(0.02)
        assert status["status"] == "completed"
        assert status["model"] == "openai/big-model"
        assert status["routing"]["tier"] == "complex"
        assert [r["model"] for r in fake.requests] == ["big-model"]


async def test_without_a_policy_nothing_is_routed(make_settings: SettingsFactory) -> None:
    async with routing_app(make_settings) as (client, fake):
        body = await run(client, "cached", COMPLEX)
        assert body["model"] == "openai/gpt-4o-mini"
        assert [r["model"] for r in fake.requests] == ["gpt-4o-mini"]
        assert await routing_seen(client, str(body["job_id"])) == [None, None, None]
