"""Input PostgreSQL cannot store, or JSON that is not quite JSON, answers 422 and stores
nothing; a tool that returns such text does not break its run. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient, Response

from tests.conftest import ALICE, ROOT, SettingsFactory
from tests.fakes.llm_server import FakeLLMServer, TextReply, ToolCallReply, serve_fake_openai
from tests.support.app import running_app

PROBLEM = "application/problem+json"
JSON = {**ALICE, "Content-Type": "application/json"}
DEEP = b"[" * 1100 + b"]" * 1100


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/agent", rb'{"agent": "assistant", "input": "a\u0000b"}', "NUL"),
        (
            "/agent/submit",
            rb'{"agent": "assistant", "input": "hi", "metadata": {"k\u0000": 1}}',
            "NUL",
        ),
        (
            "/agent/stream",
            rb'{"agent": "assistant", "input": "hi", "metadata": {"k": ["\u0000"]}}',
            "NUL",
        ),
        ("/agent/sessions", rb'{"agent": "assistant", "metadata": {"k": "\u0000"}}', "NUL"),
        (
            "/agent",
            b'{"agent": "assistant", "input": "hi", "metadata": {"k": NaN}}',
            "invalid JSON",
        ),
        ("/agent", b'{"agent": "assistant", "input": "hi", "metadata": {"k": 1e400}}', "infinity"),
        ("/agent", rb'{"agent": "assistant", "input": "\ud800"}', "surrogate"),
        (
            "/agent",
            b'{"agent": "assistant", "input": "hi", "metadata": {"k": ' + DEEP + b"}}",
            "depth",
        ),
        ("/agent", b'{"agent": "assistant", "input": "\xff"}', "UTF-8"),
    ],
)
async def test_body_that_cannot_be_stored_is_422(
    client: AsyncClient, route: str, body: bytes, fragment: str
) -> None:
    response = await client.post(route, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "validation_error"
    assert fragment.lower() in problem["detail"].lower()
    listed = await client.get("/agent/runs", headers=ALICE)
    assert listed.json()["runs"] == []  # nothing stored


async def test_an_escaped_backslash_before_u0000_is_plain_text(client: AsyncClient) -> None:
    # The JSON text "a\\u0000b" is the seven characters a, \, u, 0, 0, 0, 0, b: no NUL.
    response = await client.post(
        "/agent", content=rb'{"agent": "assistant", "input": "a\\u0000b"}', headers=JSON
    )
    assert response.status_code == 200, response.text
    trace = await client.get(f"/agent/runs/{response.json()['job_id']}/trace", headers=ALICE)
    assert trace.json()["llm_calls"][0]["request"]["messages"][-1]["content"] == "a\\u0000b"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/agent/runs?agent=a%00b", ALICE),
        ("/agent/status/a%00b", ALICE),
        ("/agent/admin/budgets/al%00ice", ROOT),
        ("/agent/feedback?agent=a%00b", ROOT),
    ],
)
async def test_nul_in_the_url_is_422(
    client: AsyncClient, path: str, headers: dict[str, str]
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "NUL" in response.json()["detail"]


async def test_a_tool_result_with_nul_bytes_is_kept_with_replacement_characters(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
    (settings.sandbox_dir / "bin.dat").write_bytes(b"abc\x00def")
    async with running_app(settings) as client:
        response = await client.post(
            "/agent", json={"agent": "assistant", "input": "read bin.dat"}, headers=ALICE
        )
        assert response.status_code == 200, response.text
        run = response.json()
        assert run["status"] == "completed", run
        trace = (await client.get(f"/agent/runs/{run['job_id']}/trace", headers=ALICE)).json()
        (tool,) = trace["tool_calls"]
        assert tool["status"] == "ok"
        assert "abc\ufffddef" in tool["result"]


@pytest.mark.parametrize(
    "query",
    [
        "/agent/feedback?since=0001-01-01T00:00:00%2B14:00",
        "/agent/feedback?until=9999-12-31T23:59:59-14:00",
        "/agent/experiments/assistant?since=0001-01-01T00:00:00%2B14:00"
        "&until=0001-01-02T00:00:00%2B14:00",
        "/agent/experiments/assistant?since=9999-12-30T00:00:00-14:00",
    ],
)
async def test_times_beyond_what_a_window_can_hold_are_422(client: AsyncClient, query: str) -> None:
    response = await client.get(query, headers=ROOT)
    assert response.status_code == 422, response.text
    assert "between 1970-01-01 and 9000-01-01" in response.json()["detail"]


async def run_against(
    make_settings: SettingsFactory, *replies: TextReply | ToolCallReply
) -> tuple[Response, dict[str, Any], FakeLLMServer]:
    """POST /agent with the model answering `replies`: the answer, the run's trace, the model."""
    async with serve_fake_openai() as fake:
        fake.enqueue(*replies)
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=fake.base_url,
            openai_api_key="sk-test",
        )
        async with running_app(settings) as client:
            response = await client.post(
                "/agent", json={"agent": "assistant", "input": "hi"}, headers=ALICE
            )
            job = response.json()["job_id"]
            trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
    return response, trace, fake


async def test_a_model_answering_unstorable_tool_call_names_and_ids_does_not_break_its_run(
    make_settings: SettingsFactory,
) -> None:
    long_name, long_id = "n" * 300, "c" * 300
    response, trace, fake = await run_against(
        make_settings,
        ToolCallReply(long_name, {"expression": "1+1"}, call_id=long_id),
        ToolCallReply("calc\u0000ulator", {"expression": "1+1"}, call_id="call\u00002"),
        TextReply("gave up"),
    )
    assert response.json()["status"] == "completed", response.text
    assert [t["status"] for t in trace["tool_calls"]] == ["refused", "refused"]
    # The provider gets its own ids back, whole.
    assert fake.requests[1]["messages"][-1]["tool_call_id"] == long_id  # type: ignore[index]


async def test_an_approval_for_a_call_with_an_overlong_id_is_stored(
    make_settings: SettingsFactory,
) -> None:
    response, _, _ = await run_against(
        make_settings, ToolCallReply("delete_file", {"path": "a.txt"}, call_id="c" * 300)
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["status"] == "awaiting_approval", run
    (approval,) = run["pending_approvals"]
    assert approval["tool"] == "delete_file"
