"""`POST /agent`, status, trace and the catalogue, over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.fakes.llm_server import ErrorReply, TextReply, ToolCallReply, Usage, serve_fake_openai
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.support.app import running_app

PROBLEM = "application/problem+json"


async def run(client: AsyncClient, text: str, **extra: object) -> dict[str, object]:
    response = await client.post(
        "/agent", json={"agent": "assistant", "input": text, **extra}, headers=ALICE
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_calculator_run_completes_with_391_and_full_trace(client: AsyncClient) -> None:
    body = await run(client, "What is 17*23?")

    assert body["status"] == "completed"
    assert body["result"] == {"output": "The result is 391."}
    assert body["agent"] == "assistant"
    assert body["agent_version"] == "1"
    assert body["model"] == "local/local-1"
    usage = body["usage"]
    assert isinstance(usage, dict)
    assert usage["llm_calls"] == 2
    assert usage["tool_calls"] == 1
    assert usage["input_tokens"] > 0
    assert body["turns"] == 2

    trace = (await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)).json()
    assert [c["turn"] for c in trace["llm_calls"]] == [1, 2]
    first = trace["llm_calls"][0]
    assert first["request"]["messages"][-1]["content"] == "What is 17*23?"
    assert {t["name"] for t in first["request"]["tools"]} >= {"calculator", "write_file"}
    assert first["response"]["message"]["tool_calls"][0]["name"] == "calculator"
    assert first["priced"] is True
    (tool,) = trace["tool_calls"]
    assert tool["name"] == "calculator"
    assert tool["arguments"] == {"expression": "17*23"}
    assert tool["status"] == "ok"
    assert tool["result"] == "391"
    assert tool["idempotency_key"] == f"{body['job_id']}:1:0"
    assert tool["latency_ms"] is not None


async def test_status_is_owner_scoped(client: AsyncClient) -> None:
    body = await run(client, "What is 2+2?")
    job = body["job_id"]

    mine = await client.get(f"/agent/status/{job}", headers=ALICE)
    assert mine.status_code == 200
    assert mine.json()["result"] == {"output": "The result is 4."}

    for path in (f"/agent/status/{job}", f"/agent/runs/{job}/trace"):
        other = await client.get(path, headers=BOB)
        assert other.status_code == 404
        assert other.headers["content-type"] == PROBLEM
        missing = await client.get(
            path.replace(str(job), "0" * 8 + "-0000-0000-0000-" + "0" * 12), headers=BOB
        )
        assert missing.json()["detail"].startswith("run ")
        assert (await client.get(path, headers=ROOT)).status_code == 200

    assert (await client.get("/agent/status/not-a-uuid", headers=ALICE)).status_code == 404


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]
)
async def test_missing_or_wrong_key_is_401(client: AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(
        "/agent", json={"agent": "assistant", "input": "hi"}, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "json"),
        (b'{"agent": "assistant"}', "input"),
        (b'{"agent": "nope", "input": "hi"}', "unknown agent 'nope'"),
        (b'{"agent": "assistant", "input": "hi", "max_turns": 99}', "exceeds the agent's limit"),
        (b'{"agent": "assistant", "input": "hi", "surprise": 1}', "surprise"),
        (b'{"agent": "assistant", "input": ""}', "input"),
        (b"[1, 2]", "body"),
    ],
)
async def test_bad_input_is_422_problem(client: AsyncClient, body: bytes, fragment: str) -> None:
    response = await client.post(
        "/agent", content=body, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "validation_error"
    assert fragment.lower() in problem["detail"].lower()


async def test_body_over_the_limit_is_413_before_buffering(make_settings: SettingsFactory) -> None:
    async with running_app(make_settings(max_body_bytes=2048)) as client:
        big = b'{"agent": "assistant", "input": "' + b"x" * 4096 + b'"}'
        declared = await client.post(
            "/agent", content=big, headers={**ALICE, "Content-Type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.headers["content-type"] == PROBLEM

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"x" * 1024

        streamed = await client.post(
            "/agent", content=chunks(), headers={**ALICE, "Content-Type": "application/json"}
        )
        assert streamed.status_code == 413


async def test_lowered_max_turns_fails_the_run(client: AsyncClient) -> None:
    body = await run(client, "What is 3*3?", max_turns=1)
    assert body["status"] == "failed"
    assert body["error"] == {
        "type": "max_turns_exceeded",
        "message": "the run reached its limit of 1 turns",
    }
    assert body["usage"]["tool_calls"] == 1  # type: ignore[index]


async def test_high_risk_tool_waits_for_approval_and_file_survives(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    settings.sandbox_dir.mkdir(parents=True)
    (settings.sandbox_dir / "notes.txt").write_text("keep me")
    async with running_app(settings) as client:
        response = await client.post(
            "/agent", json={"agent": "assistant", "input": "delete notes.txt"}, headers=ALICE
        )
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "awaiting_approval"
        (pending,) = body["pending_approvals"]
        assert pending["tool"] == "delete_file"
        assert pending["arguments"] == {"path": "notes.txt"}
        assert (settings.sandbox_dir / "notes.txt").read_text() == "keep me"
        trace = (await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)).json()
        assert trace["tool_calls"] == []

        read = await run(client, "read notes.txt")
        assert "keep me" in str(read["result"])


async def test_slow_run_answers_202_then_completes(make_settings: SettingsFactory) -> None:
    async with serve_app(script_app()) as model:
        settings = make_settings(
            sync_timeout_s=0.2,
            agents_module="tests.support.custom_agents",
            openai_base_url=f"{model}/v1",
        )
        async with running_app(settings) as client:
            # The scripted model holds each answer back for a second.
            response = await client.post(
                "/agent",
                json={"agent": "worker-agent", "input": "delay 1; calc 6*7"},
                headers=ALICE,
            )
            assert response.status_code == 202
            job = response.json()["job_id"]
            assert response.json()["status"] == "running"
            for _ in range(200):
                status = (await client.get(f"/agent/status/{job}", headers=ALICE)).json()
                if status["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert status["result"] == {"output": "done: 1 steps"}


async def test_catalogue_lists_agents_versions_and_tools(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents_module="tests.support.custom_agents")
    async with running_app(settings) as client:
        catalog = (await client.get("/agent/agents", headers=ALICE)).json()
        agents = {a["name"]: a for a in catalog["agents"]}
        assistant = agents["assistant"]
        tools = {t["name"]: t for t in assistant["tools"]}
        assert tools["delete_file"]["risk"] == "high"
        assert tools["delete_file"]["idempotent"] is False
        assert tools["calculator"]["risk"] == "low"
        assert tools["calculator"]["parameters"]["properties"]["expression"]["type"] == "string"
        shouter = agents["shouter"]
        assert [v["version"] for v in shouter["versions"]] == ["1", "2"]
        assert shouter["stable"] == "2"
        assert {t["name"] for t in shouter["tools"]} == {"shout", "calculator"}

        body = (
            await client.post(
                "/agent", json={"agent": "shouter", "input": "What is 1+1?"}, headers=ALICE
            )
        ).json()
        assert body["agent_version"] == "2"
        assert body["result"] == {"output": "The result is 2."}


async def test_openai_compatible_model_end_to_end(make_settings: SettingsFactory) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(
            ToolCallReply(
                "calculator",
                {"expression": "17*23"},
                usage=Usage(input_tokens=1000, output_tokens=20),
            ),
            TextReply(
                "17*23 is 391.",
                usage=Usage(input_tokens=1200, output_tokens=10, cached_tokens=1000),
            ),
        )
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=fake.base_url,
            openai_api_key="sk-test",
        )
        async with running_app(settings) as client:
            body = await run(client, "What is 17*23?")
            assert body["result"] == {"output": "17*23 is 391."}
            assert body["model"] == "openai/gpt-4o-mini"
            usage = body["usage"]
            assert isinstance(usage, dict)
            assert usage["input_tokens"] == 2200
            assert usage["cached_tokens"] == 1000
            assert 0 < usage["cost_usd"] < 0.01
            trace = (await client.get(f"/agent/runs/{body['job_id']}/trace", headers=ALICE)).json()
            assert trace["tool_calls"][0]["result"] == "391"
        first, second = fake.requests
        assert first["model"] == "gpt-4o-mini"
        assert "calculator" in str(first["tools"])
        assert second["messages"][-1]["role"] == "tool"  # type: ignore[index]
        assert fake.headers[0]["authorization"] == "Bearer sk-test"


async def test_health_and_readiness(client: AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert (await client.get("/openapi.json")).status_code == 200


async def test_stored_api_keys_work_and_only_a_hash_is_kept(make_settings: SettingsFactory) -> None:
    from app.services.auth import Authenticator
    from app.store.db import Database, create_engine

    settings = make_settings()
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        auth = Authenticator(secret=settings.secret_key.get_secret_value(), db=db)
        key = await auth.create_key(user_id="carol", role="user")
        async with db.engine.connect() as conn:
            from sqlalchemy import text

            stored = (await conn.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
    finally:
        await db.dispose()
    assert key not in stored
    assert stored == [auth.hash_key(key)]
    async with running_app(settings) as client:
        headers = {"Authorization": f"Bearer {key}"}
        response = await client.post(
            "/agent", json={"agent": "assistant", "input": "What is 1+2?"}, headers=headers
        )
        assert response.status_code == 200
        job = response.json()["job_id"]
        assert (await client.get(f"/agent/status/{job}", headers=ALICE)).status_code == 404


async def test_a_revoked_key_is_refused_once_its_cache_entry_ends(
    make_settings: SettingsFactory,
) -> None:
    from app.services.auth import Authenticator
    from app.store.db import Database, create_engine

    settings = make_settings()
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        auth = Authenticator(secret=settings.secret_key.get_secret_value(), db=db, cache_ttl_s=0.2)
        by_key = await auth.create_key(user_id="carol", role="user")
        by_id = await auth.create_key(user_id="carol", role="user")
        for key in (by_key, by_id):
            assert await auth.authenticate(key) is not None
        async with db.read() as conn:
            from app.store.keys import list_keys

            ids = [k.id for k in await list_keys(conn, user_id="carol")]
        revoked = await auth.revoke_key(by_key)
        assert revoked is not None
        assert revoked.revoked_at is not None
        (other,) = (i for i in ids if i != revoked.id)
        assert (await auth.revoke_key(str(other))) is not None
        await asyncio.sleep(0.3)  # past the cache entries of the two keys
        for key in (by_key, by_id):
            assert await auth.authenticate(key) is None
        again = await auth.revoke_key(by_key)  # revoking twice keeps the first time
        assert again is not None
        assert again.revoked_at == revoked.revoked_at
        assert await auth.revoke_key("ak_unknown") is None
        assert await auth.revoke_key("not-an-id") is None
    finally:
        await db.dispose()
    async with running_app(settings) as client:
        response = await client.get("/agent/usage", headers={"Authorization": f"Bearer {by_key}"})
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (ErrorReply(500, "upstream broke"), "ProviderServerError"),
        (ErrorReply(429, "slow down", headers={"Retry-After": "3"}), "ProviderRateLimited"),
        (ErrorReply(401, "bad key"), "ProviderAuthError"),
        (None, "ProviderUnavailable"),
    ],
)
async def test_provider_failures_through_the_service(
    make_settings: SettingsFactory, reply: ErrorReply | None, expected: str
) -> None:
    async with serve_fake_openai() as fake:
        base_url = fake.base_url
        if reply is not None:
            fake.enqueue(reply)
        # One attempt: these errors (but the 401) are retried, which tests/integration/
        # test_resilience.py covers; here each must reach the run's error as its type.
        settings = make_settings(
            default_model="openai/gpt-4o-mini", openai_base_url=base_url, llm_retry_attempts=1
        )
        if reply is None:
            # A port nobody listens on: the connection is refused.
            settings = make_settings(
                default_model="openai/gpt-4o-mini",
                openai_base_url="http://127.0.0.1:9/v1",
                llm_retry_attempts=1,
            )
        async with running_app(settings) as client:
            body = await run(client, "hello")
    assert body["status"] == "failed"
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "llm_unavailable"
    assert expected in error["message"]
