"""Stateful sessions over HTTP on SQLite and PostgreSQL: history, the log, one message at a
time, owner scoping, deletion."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import func, select

from app.settings import Settings
from app.store.db import Database, create_engine
from app.store.runs import events_t, llm_calls_t, runs, tool_calls_t
from app.store.sessions import sessions_t
from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.support.app import running_app
from tests.support.polling import until
from tests.support.sse import collect

PROBLEM = "application/problem+json"
MISSING = "00000000-0000-0000-0000-000000000000"
INSTRUCTIONS_PREFIX = "You are a careful assistant."


async def new_session(client: AsyncClient, agent: str = "assistant") -> str:
    response = await client.post("/agent/sessions", json={"agent": agent}, headers=ALICE)
    assert response.status_code == 201, response.text
    session: str = response.json()["session_id"]
    return session


async def send(
    client: AsyncClient, session: str, text: str, headers: dict[str, str] = ALICE
) -> Response:
    return await client.post(
        f"/agent/sessions/{session}/messages", json={"input": text}, headers=headers
    )


async def answered(
    client: AsyncClient, session: str, text: str, **extra: object
) -> dict[str, object]:
    """A message that ends within the sync timeout; `extra`: more body fields."""
    response = await client.post(
        f"/agent/sessions/{session}/messages", json={"input": text, **extra}, headers=ALICE
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["session_id"] == session
    return body


async def first_request_messages(client: AsyncClient, job: object) -> list[dict[str, object]]:
    """The messages the run's first LLM call sent to the model."""
    trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
    messages: list[dict[str, object]] = trace["llm_calls"][0]["request"]["messages"]
    return messages


async def wait_until_ended(client: AsyncClient, job: str) -> dict[str, object]:
    for _ in range(200):
        body: dict[str, object] = (await client.get(f"/agent/status/{job}", headers=ALICE)).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {job} did not end")


def conflict(response: Response, run_id: object) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "conflict"
    assert problem["title"] == "Conflict"
    assert str(run_id) in problem["detail"]


async def test_create_answers_201_with_the_session(client: AsyncClient) -> None:
    response = await client.post(
        "/agent/sessions",
        json={"agent": "assistant", "metadata": {"topic": "maths"}},
        headers=ALICE,
    )
    assert response.status_code == 201
    body = response.json()
    assert uuid.UUID(body["session_id"])
    assert body["agent"] == "assistant"
    assert body["metadata"] == {"topic": "maths"}
    assert body["created_at"]

    log = (await client.get(f"/agent/sessions/{body['session_id']}", headers=ALICE)).json()
    assert log == {**body, "status": None, "runs": [], "messages": []}


async def test_second_message_sees_the_first_exchange_and_the_log_tags_runs(
    client: AsyncClient,
) -> None:
    session = await new_session(client)
    first = await answered(client, session, "What is 17*23?")
    assert first["result"] == {"output": "The result is 391."}
    second = await answered(client, session, "What is 2+2?", metadata={"n": 2})
    assert second["result"] == {"output": "The result is 4."}
    assert second["metadata"] == {"n": 2}

    sent = await first_request_messages(client, second["job_id"])
    assert [m["role"] for m in sent] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert str(sent[0]["content"]).startswith(INSTRUCTIONS_PREFIX)
    assert sent[1]["content"] == "What is 17*23?"
    assert sent[2]["tool_calls"][0]["name"] == "calculator"  # type: ignore[index]
    assert sent[3]["content"] == "391"
    assert sent[4]["content"] == "The result is 391."
    assert sent[5]["content"] == "What is 2+2?"

    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert log["status"] == "completed"
    assert [(r["run_id"], r["status"], r["error"]) for r in log["runs"]] == [
        (first["job_id"], "completed", None),
        (second["job_id"], "completed", None),
    ]
    messages = log["messages"]
    assert [(m["run_id"], m["role"]) for m in messages] == [
        (first["job_id"], "user"),
        (first["job_id"], "assistant"),
        (first["job_id"], "tool"),
        (first["job_id"], "assistant"),
        (second["job_id"], "user"),
        (second["job_id"], "assistant"),
        (second["job_id"], "tool"),
        (second["job_id"], "assistant"),
    ]
    call = messages[1]["tool_calls"][0]
    assert (call["name"], call["arguments"]) == ("calculator", {"expression": "17*23"})
    assert messages[2]["content"] == "391"
    assert messages[2]["tool_call_id"] == call["id"]
    assert messages[2]["name"] == "calculator"
    assert messages[3]["content"] == "The result is 391."
    assert messages[7]["content"] == "The result is 4."


def in_session(session: str, text: str, agent: str = "assistant") -> dict[str, object]:
    return {"agent": agent, "input": text, "session_id": session}


async def test_every_pattern_continues_the_session_its_body_names(client: AsyncClient) -> None:
    session = await new_session(client)
    sync = await client.post("/agent", json=in_session(session, "What is 17*23?"), headers=ALICE)
    assert sync.status_code == 200, sync.text
    assert sync.json()["session_id"] == session

    submitted = await client.post(
        "/agent/submit", json=in_session(session, "What is 2+2?"), headers=ALICE
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["job_id"]

    async def job_done() -> bool:
        status = await client.get(f"/agent/status/{job}", headers=ALICE)
        return bool(status.json()["status"] == "completed")

    await until(job_done, "the submitted message")

    body = in_session(session, "What is 3*3?")
    async with client.stream("POST", "/agent/stream", json=body, headers=ALICE) as streamed:
        assert streamed.status_code == 200
        events = await collect(streamed)
    assert events[-1].event == "run.completed"
    streamed_job = events[-1].json()["job_id"]

    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert [r["run_id"] for r in log["runs"]] == [sync.json()["job_id"], job, streamed_job]
    users = [m["content"] for m in log["messages"] if m["role"] == "user"]
    assert users == ["What is 17*23?", "What is 2+2?", "What is 3*3?"]
    # The third message's model call carried the first two exchanges.
    sent = await first_request_messages(client, streamed_job)
    assert [m["content"] for m in sent if m["role"] == "user"] == users


async def test_a_body_naming_a_session_is_checked_like_a_message(
    make_settings: SettingsFactory,
) -> None:
    # No worker: a submitted message stays pending, so the session is busy.
    async with running_app(make_settings(embedded_workers=0)) as client:
        session = await new_session(client)
        first = await client.post(
            "/agent/submit", json=in_session(session, "What is 2+2?"), headers=ALICE
        )
        assert first.status_code == 202
        cases = [
            (ALICE, in_session(session, "again"), 409, "conflict"),
            (ALICE, in_session(session, "hi", agent="other"), 422, "validation_error"),
            (BOB, in_session(session, "hi"), 404, "not_found"),
            (ALICE, in_session(MISSING, "hi"), 404, "not_found"),
            (ROOT, in_session(session, "hi"), 403, "forbidden"),
            (ALICE, in_session("not-a-uuid", "hi"), 422, "validation_error"),
        ]
        for route in ("/agent", "/agent/submit", "/agent/stream"):
            for headers, request, status, kind in cases:
                response = await client.post(route, json=request, headers=headers)
                assert response.status_code == status, (route, request, response.text)
                assert response.headers["content-type"] == PROBLEM
                assert response.json()["type"] == kind
        log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
        assert [r["run_id"] for r in log["runs"]] == [first.json()["job_id"]]


async def test_failed_message_leaves_only_its_question_in_the_history(
    client: AsyncClient,
) -> None:
    session = await new_session(client)
    failed = await answered(client, session, "What is 3*3?", max_turns=1)
    assert failed["status"] == "failed"
    after = await answered(client, session, "hello there")
    assert after["result"] == {"output": "You said: hello there"}

    sent = await first_request_messages(client, after["job_id"])
    assert [(m["role"], m.get("content")) for m in sent[1:]] == [
        ("user", "What is 3*3?"),
        ("user", "hello there"),
    ]

    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert log["runs"][0]["error"]["type"] == "max_turns_exceeded"
    assert [(m["run_id"], m["role"]) for m in log["messages"]] == [
        (failed["job_id"], "user"),
        (failed["job_id"], "assistant"),
        (failed["job_id"], "tool"),
        (after["job_id"], "user"),
        (after["job_id"], "assistant"),
    ]
    assert log["messages"][2]["content"] == "9"


async def test_message_while_one_waits_for_approval_is_409_until_it_ends(
    client: AsyncClient,
) -> None:
    session = await new_session(client)
    paused = await send(client, session, "delete notes.txt")
    assert paused.status_code == 202
    job = paused.json()["job_id"]
    assert paused.json()["status"] == "awaiting_approval"

    conflict(await send(client, session, "What is 1+1?"), job)
    conflict(await client.delete(f"/agent/sessions/{session}", headers=ALICE), job)
    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert log["status"] == "awaiting_approval"
    assert len(log["runs"]) == 1

    assert (await client.post(f"/agent/cancel/{job}", headers=ALICE)).json()["status"] == (
        "cancelled"
    )
    after = await answered(client, session, "What is 1+1?")
    assert after["result"] == {"output": "The result is 2."}
    # The cancelled run's unanswered tool call is not sent to the model again.
    sent = await first_request_messages(client, after["job_id"])
    assert [(m["role"], m.get("content")) for m in sent[1:]] == [
        ("user", "delete notes.txt"),
        ("user", "What is 1+1?"),
    ]
    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert [m["role"] for m in log["messages"]][:2] == ["user", "assistant"]
    assert log["messages"][1]["tool_calls"][0]["name"] == "delete_file"

    assert (await client.delete(f"/agent/sessions/{session}", headers=ALICE)).status_code == 204


async def test_concurrent_messages_start_only_one_run(client: AsyncClient) -> None:
    session = await new_session(client)
    answers = await asyncio.gather(*(send(client, session, "delete notes.txt") for _ in range(6)))
    started = [a for a in answers if a.status_code == 202]
    assert len(started) == 1, [a.text for a in answers]
    job = started[0].json()["job_id"]
    for refused in (a for a in answers if a.status_code != 202):
        conflict(refused, job)
    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert [r["run_id"] for r in log["runs"]] == [job]


async def test_slow_message_answers_202_then_the_session_takes_the_next(
    make_settings: SettingsFactory,
) -> None:
    async with serve_app(script_app()) as model:
        settings = make_settings(
            sync_timeout_s=0.2,
            agents_module="tests.support.custom_agents",
            openai_base_url=f"{model}/v1",
        )
        async with running_app(settings) as client:
            session = await new_session(client, "worker-agent")
            slow = await send(client, session, "nap 1")
            assert slow.status_code == 202
            job = slow.json()["job_id"]
            assert slow.json()["status"] == "running"
            conflict(await send(client, session, "calc 6*7"), job)

            done = await wait_until_ended(client, job)
            assert done["result"] == {"output": "done: 1 steps"}
            nxt = await answered(client, session, "calc 6*7")
            assert nxt["result"] == {"output": "done: 1 steps"}
            sent = await first_request_messages(client, nxt["job_id"])
            assert [m["role"] for m in sent] == [
                "system",
                "user",
                "assistant",
                "tool",
                "assistant",
                "user",
            ]


async def test_sessions_are_owner_scoped(client: AsyncClient) -> None:
    session = await new_session(client)
    job = (await answered(client, session, "What is 2+2?"))["job_id"]

    for target in (session, MISSING):
        for response in (
            await client.get(f"/agent/sessions/{target}", headers=BOB),
            await send(client, target, "What is 1+1?", BOB),
            await client.delete(f"/agent/sessions/{target}", headers=BOB),
        ):
            assert response.status_code == 404, response.text
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["type"] == "not_found"
            assert response.json()["detail"] == f"session {target} not found"
    assert (await send(client, "not-a-uuid", "hi")).status_code == 404
    assert (await client.get("/agent/sessions/not-a-uuid", headers=ALICE)).status_code == 404

    # Admins read every session, like every run, but do not speak in another user's.
    log = await client.get(f"/agent/sessions/{session}", headers=ROOT)
    assert log.status_code == 200
    assert [r["run_id"] for r in log.json()["runs"]] == [job]
    assert (await send(client, session, "What is 1+1?", ROOT)).status_code == 403
    assert (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json() == log.json()
    unauthenticated = await client.get(f"/agent/sessions/{session}")
    assert unauthenticated.status_code == 401


async def test_delete_removes_the_session_its_runs_events_and_traces(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        session = await new_session(client)
        jobs = [
            (await answered(client, session, text))["job_id"]
            for text in ("What is 17*23?", "What is 2+2?")
        ]
        other = await new_session(client)
        kept = (await answered(client, other, "What is 5*5?"))["job_id"]
        assert await _rows(settings, jobs) > 0

        deleted = await client.delete(f"/agent/sessions/{session}", headers=ALICE)
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert (await client.get(f"/agent/sessions/{session}", headers=ALICE)).status_code == 404
        assert (await client.delete(f"/agent/sessions/{session}", headers=ALICE)).status_code == (
            404
        )
        for job in jobs:
            assert (await client.get(f"/agent/status/{job}", headers=ALICE)).status_code == 404
            trace = await client.get(f"/agent/runs/{job}/trace", headers=ALICE)
            assert trace.status_code == 404
        assert (await client.get(f"/agent/status/{kept}", headers=ALICE)).status_code == 200
        assert (
            len((await client.get(f"/agent/sessions/{other}", headers=ALICE)).json()["runs"]) == 1
        )
    assert await _rows(settings, jobs) == 0
    assert await _session_rows(settings, session) == 0


async def _rows(settings: Settings, jobs: list[object]) -> int:
    """Rows about these runs: the runs, their events, LLM calls and tool calls."""
    ids = [uuid.UUID(str(j)) for j in jobs]
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        async with db.transaction() as conn:
            total = 0
            for table, column in (
                (runs, runs.c.id),
                (events_t, events_t.c.run_id),
                (llm_calls_t, llm_calls_t.c.run_id),
                (tool_calls_t, tool_calls_t.c.run_id),
            ):
                stmt = select(func.count()).select_from(table).where(column.in_(ids))
                total += (await conn.execute(stmt)).scalar_one()
            return total
    finally:
        await db.dispose()


async def _session_rows(settings: Settings, session: str) -> int:
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        async with db.transaction() as conn:
            stmt = select(func.count()).where(sessions_t.c.id == uuid.UUID(session))
            count: int = (await conn.execute(stmt)).scalar_one()
            return count
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"agent": "nope"}', "unknown agent 'nope'"),
        (b'{"agent": ""}', "agent"),
        (b"{}", "agent"),
        (b'{"agent": "assistant", "surprise": 1}', "surprise"),
        (b"{not json", "json"),
    ],
)
async def test_bad_session_is_422_problem(client: AsyncClient, body: bytes, fragment: str) -> None:
    response = await client.post(
        "/agent/sessions", content=body, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "validation_error"
    assert fragment.lower() in response.json()["detail"].lower()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"input": ""}', "input"),
        (b"{}", "input"),
        (b'{"input": "hi", "max_turns": 99}', "exceeds the agent's limit"),
        (b'{"input": "hi", "timeout_s": 0}', "timeout_s"),
        (b'{"input": "hi", "agent": "assistant"}', "agent"),
        (b'{"input": "hi", "webhook_url": "https://example.com"}', "webhook_url"),
    ],
)
async def test_bad_message_is_422_problem(client: AsyncClient, body: bytes, fragment: str) -> None:
    session = await new_session(client)
    response = await client.post(
        f"/agent/sessions/{session}/messages",
        content=body,
        headers={**ALICE, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "validation_error"
    assert fragment.lower() in response.json()["detail"].lower()
    log = (await client.get(f"/agent/sessions/{session}", headers=ALICE)).json()
    assert log["runs"] == []
