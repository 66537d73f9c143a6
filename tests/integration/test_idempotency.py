"""`Idempotency-Key` on `POST /agent/submit`, on SQLite and PostgreSQL: a submission sent
again gets the run the first one stored, never a second run."""

from __future__ import annotations

import asyncio

from httpx import AsyncClient, Response
from sqlalchemy import func, select

from app.settings import Settings
from app.store.db import Database, create_engine
from app.store.runs import runs
from tests.conftest import ALICE, BOB, SettingsFactory
from tests.support.app import running_app
from tests.support.sse import collect

BODY: dict[str, object] = {
    "agent": "assistant",
    "input": "What is 17*23?",
    "metadata": {"ticket": "T-1"},
}


async def submit(
    client: AsyncClient, key: str, body: dict[str, object] = BODY, headers: dict[str, str] = ALICE
) -> Response:
    return await client.post(
        "/agent/submit", json=body, headers={**headers, "Idempotency-Key": key}
    )


async def runs_of(settings: Settings, user: str) -> int:
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        async with db.read() as conn:
            count = select(func.count()).where(runs.c.user_id == user)
            return int((await conn.execute(count)).scalar_one())
    finally:
        await db.dispose()


async def test_a_submission_sent_again_gets_the_same_run(make_settings: SettingsFactory) -> None:
    settings = make_settings(embedded_workers=0)
    async with running_app(settings) as client:
        first = await submit(client, "order-42")
        assert first.status_code == 202, first.text
        assert "idempotent-replayed" not in first.headers
        # The same request, its keys in another order: the same run, marked as a replay.
        again = await submit(client, "order-42", dict(reversed(list(BODY.items()))))
        assert again.status_code == 202, again.text
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        # The key is the user's own: bob's order-42 is another run.
        bobs = await submit(client, "order-42", headers=BOB)
        assert bobs.status_code == 202
        assert bobs.json()["job_id"] != first.json()["job_id"]
        # Without a key every submission is a run of its own.
        plain = await client.post("/agent/submit", json=BODY, headers=ALICE)
        assert plain.json()["job_id"] != first.json()["job_id"]
    assert await runs_of(settings, "alice") == 2
    assert await runs_of(settings, "bob") == 1


async def test_a_key_reused_for_another_request_is_refused(make_settings: SettingsFactory) -> None:
    settings = make_settings(embedded_workers=0)
    async with running_app(settings) as client:
        assert (await submit(client, "k1")).status_code == 202
        other = await submit(client, "k1", {**BODY, "input": "What is 2+2?"})
        assert other.status_code == 422
        assert other.headers["content-type"] == "application/problem+json"
        assert "Idempotency-Key 'k1' was already used for another request" in other.json()["detail"]
        for bad in ("", "x" * 256):
            response = await submit(client, bad)
            assert response.status_code == 422, bad
            assert response.json()["type"] == "validation_error"
    assert await runs_of(settings, "alice") == 1


async def test_concurrent_submissions_with_one_key_store_one_run(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(embedded_workers=0)
    async with running_app(settings) as client:
        answers = await asyncio.gather(*(submit(client, "burst") for _ in range(10)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
    assert await runs_of(settings, "alice") == 1


async def test_sync_and_stream_requests_sent_again_get_their_run(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        keyed = {**ALICE, "Idempotency-Key": "sync-1"}
        first = await client.post("/agent", json=BODY, headers=keyed)
        assert first.status_code == 200, first.text
        again = await client.post("/agent", json=BODY, headers=keyed)
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["job_id"] == first.json()["job_id"]
        assert again.json()["result"] == first.json()["result"] == {"output": "The result is 391."}

        keyed = {**ALICE, "Idempotency-Key": "stream-1"}
        seen = []
        for _ in range(2):
            async with client.stream("POST", "/agent/stream", json=BODY, headers=keyed) as r:
                assert r.status_code == 200
                seen.append((r.headers.get("idempotent-replayed"), await collect(r)))
        (fresh, events), (replay, replayed) = seen
        assert (fresh, replay) == (None, "true")
        # The replay is the same run, its events from the first.
        assert [(e.id, e.event, e.data) for e in replayed] == [
            (e.id, e.event, e.data) for e in events
        ]
        assert events[-1].event == "run.completed"
    assert await runs_of(settings, "alice") == 2
