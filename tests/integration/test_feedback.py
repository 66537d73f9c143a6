"""Thumbs up or down on runs, on SQLite and PostgreSQL: rating and re-rating, who may rate
what, validation, the output filter on comments, session messages, the admin list and the
metric."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from httpx import AsyncClient, Response
from prometheus_client.parser import text_string_to_metric_families

from app.store import runs as run_store
from app.store.db import Database, create_engine
from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.support.app import running_app
from tests.support.runs import new_run

PROBLEM = "application/problem+json"
MAIL = "write to jane.doe@example.com"
SHOWN_MAIL = "write to [EMAIL_REDACTED]"


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[AsyncClient]:
    settings = make_settings(agents_module="tests.support.feedback_agents")
    async with running_app(settings) as c:
        yield c


async def finished_run(
    client: AsyncClient, headers: dict[str, str] = ALICE, agent: str = "assistant"
) -> str:
    response = await client.post(
        "/agent", json={"agent": agent, "input": "What is 17*23?"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    job: str = response.json()["job_id"]
    return job


async def rate(
    client: AsyncClient, job: str, body: dict[str, object], headers: dict[str, str] = ALICE
) -> Response:
    return await client.post(f"/agent/runs/{job}/feedback", json=body, headers=headers)


async def run_of(client: AsyncClient, job: str) -> dict[str, object]:
    response = await client.get(f"/agent/status/{job}", headers=ALICE)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def trace_of(client: AsyncClient, job: str, headers: dict[str, str] = ALICE) -> list[object]:
    response = await client.get(f"/agent/runs/{job}/trace", headers=headers)
    assert response.status_code == 200, response.text
    feedback: list[object] = response.json()["feedback"]
    return feedback


def assert_problem(response: Response, status: int, type_: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["type"] == type_
    assert body["status"] == status
    return body


async def test_rating_shows_on_the_run_and_a_new_one_replaces_it(client: AsyncClient) -> None:
    job = await finished_run(client)
    assert (await run_of(client, job))["feedback"] is None

    first = await rate(client, job, {"rating": "up"})
    assert first.status_code == 201, first.text
    assert first.json()["rating"] == "up"
    assert first.json()["comment"] is None
    assert first.json()["tags"] == []
    assert (await run_of(client, job))["feedback"] == first.json()

    second = await rate(
        client, job, {"rating": "down", "comment": "wrong sum", "tags": ["wrong_answer", "slow"]}
    )
    assert second.status_code == 201, second.text
    assert (await run_of(client, job))["feedback"] == {
        "rating": "down",
        "comment": "wrong sum",
        "tags": ["wrong_answer", "slow"],
        "created_at": second.json()["created_at"],
    }
    # The trace keeps every rating, oldest first; the admin list only the current one.
    assert await trace_of(client, job) == [first.json(), second.json()]
    listed = (await client.get("/agent/feedback", headers=ROOT)).json()["feedback"]
    assert [(f["job_id"], f["rating"]) for f in listed] == [(job, "down")]


async def test_ratings_at_once_leave_exactly_one_current(client: AsyncClient) -> None:
    job = await finished_run(client)
    ratings = ["up", "down"] * 5
    answers = await asyncio.gather(*(rate(client, job, {"rating": r}) for r in ratings))
    assert [a.status_code for a in answers] == [201] * len(ratings)
    history = await trace_of(client, job)
    assert len(history) == len(ratings)
    listed = (await client.get("/agent/feedback", headers=ROOT)).json()["feedback"]
    assert len(listed) == 1
    # The run shows the rating that was stored last, the one the list shows.
    assert (await run_of(client, job))["feedback"] == history[-1]
    assert listed[0]["rating"] == history[-1]["rating"]  # type: ignore[index]


async def test_another_users_run_is_not_found_and_an_admin_may_not_rate_it(
    client: AsyncClient,
) -> None:
    job = await finished_run(client)
    missing = str(uuid.uuid4())
    not_found = assert_problem(await rate(client, missing, {"rating": "up"}), 404, "not_found")
    by_bob = assert_problem(await rate(client, job, {"rating": "down"}, BOB), 404, "not_found")
    # Exactly the answer for a run that does not exist: nothing tells Bob it does.
    assert by_bob == {**not_found, "detail": str(not_found["detail"]).replace(missing, job)}
    assert_problem(await rate(client, "not-a-uuid", {"rating": "up"}), 404, "not_found")
    assert_problem(await rate(client, job, {"rating": "down"}, ROOT), 403, "forbidden")
    assert (await run_of(client, job))["feedback"] is None
    assert await trace_of(client, job) == []


async def test_a_run_that_has_not_finished_cannot_be_rated(
    make_settings: SettingsFactory,
) -> None:
    # No worker: the submitted run stays pending.
    async with running_app(make_settings(embedded_workers=0)) as client:
        submitted = await client.post(
            "/agent/submit", json={"agent": "assistant", "input": "What is 1+2?"}, headers=ALICE
        )
        assert submitted.status_code == 202
        job = submitted.json()["job_id"]
        body = assert_problem(await rate(client, job, {"rating": "up"}), 409, "conflict")
        assert "pending" in str(body["detail"])
        assert (await run_of(client, job))["feedback"] is None


async def test_a_shadow_run_is_not_found_even_by_its_user(
    client: AsyncClient, make_settings: SettingsFactory
) -> None:
    live = await finished_run(client)
    shadow = uuid.uuid4()
    now = datetime.now(UTC)
    db = Database(create_engine(make_settings().database_url, pool_size=1))
    try:
        async with db.transaction() as conn:
            await run_store.insert_run(
                conn,
                new_run(
                    id=shadow,
                    pattern="job",
                    status="completed",
                    created_at=now,
                    shadow_of=uuid.UUID(live),
                ),
            )
    finally:
        await db.dispose()
    assert_problem(await rate(client, str(shadow), {"rating": "up"}), 404, "not_found")
    assert_problem(await rate(client, str(shadow), {"rating": "up"}, ROOT), 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"rating": "meh"},
        {"comment": "no rating"},
        {"rating": "up", "comment": "x" * 2001},
        {"rating": "up", "tags": [f"t{i}" for i in range(11)]},
        {"rating": "up", "tags": ["Upper"]},
        {"rating": "up", "tags": ["with space"]},
        {"rating": "up", "tags": [""]},
        {"rating": "up", "tags": ["x" * 33]},
        {"rating": "up", "stars": 5},
    ],
)
async def test_invalid_ratings_are_422_and_store_nothing(
    client: AsyncClient, body: dict[str, object]
) -> None:
    job = await finished_run(client)
    assert_problem(await rate(client, job, body), 422, "validation_error")
    assert (await run_of(client, job))["feedback"] is None
    assert await trace_of(client, job) == []
    assert (await client.get("/agent/feedback", headers=ROOT)).json()["feedback"] == []


async def test_the_limits_themselves_are_accepted(client: AsyncClient) -> None:
    job = await finished_run(client)
    tags = [f"tag-{i}_x" for i in range(9)] + ["x" * 32]
    response = await rate(client, job, {"rating": "up", "comment": "y" * 2000, "tags": tags})
    assert response.status_code == 201, response.text
    assert response.json()["tags"] == tags


async def test_repeated_tags_count_once(client: AsyncClient) -> None:
    job = await finished_run(client)
    tags = ["a"] * 11 + [f"t{i}" for i in range(9)]
    response = await rate(client, job, {"rating": "up", "tags": tags})
    assert response.status_code == 201, response.text
    assert response.json()["tags"] == ["a"] + [f"t{i}" for i in range(9)]


async def test_comments_pass_the_output_filter_except_in_the_admins_trace(
    client: AsyncClient,
) -> None:
    job = await finished_run(client)
    response = await rate(client, job, {"rating": "down", "comment": MAIL})
    assert response.json()["comment"] == SHOWN_MAIL

    assert (await run_of(client, job))["feedback"]["comment"] == SHOWN_MAIL  # type: ignore[index]
    listed = (await client.get("/agent/feedback", headers=ROOT)).json()["feedback"]
    assert [f["comment"] for f in listed] == [SHOWN_MAIL]
    users = await client.get(f"/agent/runs/{job}/trace", headers=ALICE)
    assert users.json()["feedback"][0]["comment"] == SHOWN_MAIL
    assert "jane.doe" not in users.text
    admins = await trace_of(client, job, ROOT)
    assert admins[0]["comment"] == MAIL  # type: ignore[index]

    # The filter is the one of the run's agent version: "diary" filters nothing.
    diary = await finished_run(client, agent="diary")
    assert (await rate(client, diary, {"rating": "up", "comment": MAIL})).json()["comment"] == MAIL


async def test_a_session_message_is_rated_by_its_job_id(client: AsyncClient) -> None:
    session = await client.post("/agent/sessions", json={"agent": "assistant"}, headers=ALICE)
    assert session.status_code == 201
    url = f"/agent/sessions/{session.json()['session_id']}/messages"
    answer = await client.post(url, json={"input": "What is 2+3?"}, headers=ALICE)
    assert answer.status_code == 200, answer.text
    job = answer.json()["job_id"]

    response = await rate(client, job, {"rating": "up", "tags": ["helpful"]})
    assert response.status_code == 201, response.text
    run = await run_of(client, job)
    assert run["session_id"] == session.json()["session_id"]
    assert run["feedback"] == response.json()
    assert_problem(await rate(client, job, {"rating": "down"}, BOB), 404, "not_found")


async def test_admins_list_current_ratings_with_filters(client: AsyncClient) -> None:
    alice_job = await finished_run(client)
    bob_job = await finished_run(client, BOB)
    diary_job = await finished_run(client, agent="diary")
    await rate(client, alice_job, {"rating": "up"})
    second = await rate(client, bob_job, {"rating": "down", "tags": ["rude"]}, BOB)
    third = await rate(client, diary_job, {"rating": "down"})

    async def listed(**params: str) -> list[tuple[str, str]]:
        response = await client.get("/agent/feedback", params=params, headers=ROOT)
        assert response.status_code == 200, response.text
        return [(f["job_id"], f["rating"]) for f in response.json()["feedback"]]

    newest_first = [(diary_job, "down"), (bob_job, "down"), (alice_job, "up")]
    assert await listed() == newest_first
    assert await listed(limit="2") == newest_first[:2]
    assert await listed(agent="assistant") == newest_first[1:]
    assert await listed(agent="diary", version="3") == newest_first[:1]
    assert await listed(agent="diary", version="1") == []
    assert await listed(rating="up") == [(alice_job, "up")]
    assert await listed(rating="down", agent="assistant") == [(bob_job, "down")]
    assert await listed(since=second.json()["created_at"]) == newest_first[:2]
    assert await listed(until=third.json()["created_at"]) == newest_first[1:]
    assert await listed(variant="b") == []

    item = (await client.get("/agent/feedback", params={"agent": "assistant"}, headers=ROOT)).json()
    assert item["feedback"][0] == {
        "job_id": bob_job,
        "user_id": "bob",
        "agent": "assistant",
        "agent_version": "1",
        "experiment": None,
        "variant": None,
        "rating": "down",
        "comment": None,
        "tags": ["rude"],
        "created_at": second.json()["created_at"],
    }


@pytest.mark.parametrize(
    "params",
    [{"rating": "meh"}, {"limit": "501"}, {"limit": "0"}, {"since": "2026-01-01T00:00:00"}],
)
async def test_bad_list_filters_are_422(client: AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/agent/feedback", params=params, headers=ROOT)
    assert_problem(response, 422, "validation_error")


async def test_only_admins_list_feedback(client: AsyncClient) -> None:
    job = await finished_run(client)
    await rate(client, job, {"rating": "up"})
    for headers in (ALICE, BOB):
        response = await client.get("/agent/feedback", headers=headers)
        assert_problem(response, 403, "forbidden")
    assert (await client.get("/agent/feedback")).status_code == 401


def feedback_counts(text: str) -> dict[tuple[str, str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "agentsvc_feedback_total":
                labels = sample.labels
                # No per-user (or per-run) labels: cardinality stays bounded.
                assert set(labels) == {"agent", "version", "rating"}
                key = (labels["agent"], labels["version"], labels["rating"])
                counts[key] = sample.value
    return counts


async def test_ratings_are_counted_in_metrics(client: AsyncClient) -> None:
    # This process's registry is shared by every in-process app: compare before and after.
    job = await finished_run(client)
    diary = await finished_run(client, agent="diary")
    before = feedback_counts((await client.get("/metrics")).text)
    await rate(client, job, {"rating": "up"})
    await rate(client, job, {"rating": "down"})
    await rate(client, diary, {"rating": "down", "comment": MAIL})
    await rate(client, job, {"rating": "sideways"})
    await rate(client, job, {"rating": "up"}, BOB)
    after = feedback_counts((await client.get("/metrics")).text)

    def delta(agent: str, version: str, rating: str) -> float:
        key = (agent, version, rating)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("assistant", "1", "up") == 1
    assert delta("assistant", "1", "down") == 1
    assert delta("diary", "3", "down") == 1
    assert delta("diary", "3", "up") == 0
