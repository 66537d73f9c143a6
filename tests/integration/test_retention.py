"""Retention on SQLite and PostgreSQL: queue maintenance deletes finished runs outside
sessions, and sessions idle, for longer than AGENTSVC_RETENTION_DAYS, with their events and
trace rows; it keeps recent runs, runs still going and sessions in use, whole."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update

from app.settings import Settings
from app.store import runs as run_store
from app.store.db import Database, create_engine
from app.store.runs import events_t, llm_calls_t, runs, tool_calls_t
from app.store.sessions import sessions_t
from tests.conftest import ALICE, SettingsFactory
from tests.support.app import running_app
from tests.support.metrics import Delta, scrape
from tests.support.polling import until
from tests.support.runs import new_run

LONG_AGO = datetime.now(UTC) - timedelta(days=3)


async def ask(client: AsyncClient, text: str = "What is 17*23?", **extra: object) -> str:
    response = await client.post(
        "/agent", json={"agent": "assistant", "input": text, **extra}, headers=ALICE
    )
    assert response.status_code == 200, response.text
    job: str = response.json()["job_id"]
    return job


async def new_session(client: AsyncClient) -> str:
    response = await client.post("/agent/sessions", json={"agent": "assistant"}, headers=ALICE)
    assert response.status_code == 201
    session: str = response.json()["session_id"]
    return session


async def age(db: Database, *, run_ids: list[str], session_ids: list[str]) -> None:
    """Move runs and sessions three days into the past."""
    async with db.transaction() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id.in_([uuid.UUID(r) for r in run_ids]))
            .values(created_at=LONG_AGO, started_at=LONG_AGO, finished_at=LONG_AGO)
        )
        await conn.execute(
            update(sessions_t)
            .where(sessions_t.c.id.in_([uuid.UUID(s) for s in session_ids]))
            .values(created_at=LONG_AGO)
        )


async def rows_of(db: Database, run_id: str) -> int:
    """Events and trace rows left of a run."""
    total = 0
    async with db.read() as conn:
        for table in (events_t, llm_calls_t, tool_calls_t):
            count = select(func.count()).where(table.c.run_id == uuid.UUID(run_id))
            total += (await conn.execute(count)).scalar_one()
    return total


def retaining(make_settings: SettingsFactory) -> Settings:
    # Maintenance every second (a third of the lease, at most 5 s).
    return make_settings(retention_days=1, lease_seconds=3, poll_interval_s=0.05)


async def test_what_is_past_retention_goes_and_the_rest_stays(
    make_settings: SettingsFactory,
) -> None:
    settings = retaining(make_settings)
    db = Database(create_engine(settings.database_url, pool_size=2))
    try:
        async with running_app(settings) as client:
            before = await scrape(client)
            old, recent = await ask(client), await ask(client)
            assert await rows_of(db, old) > 0
            idle, in_use = await new_session(client), await new_session(client)
            idle_run = await ask(client, session_id=idle)
            first_in_use = await ask(client, session_id=in_use)
            await ask(client, "What is 2+2?", session_id=in_use)  # today: the session is in use
            # Still going (held by a worker elsewhere), though created long ago.
            going = new_run(
                status="running",
                created_at=LONG_AGO,
                lease_owner="elsewhere",
                lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
                attempt=1,
            )
            async with db.transaction() as conn:
                await run_store.insert_run(conn, going)
            await age(db, run_ids=[old, idle_run, first_in_use], session_ids=[idle, in_use])

            async def old_gone() -> bool:
                response = await client.get(f"/agent/status/{old}", headers=ALICE)
                return response.status_code == 404

            await until(old_gone, "the sweep of the old run")

            async def idle_gone() -> bool:
                response = await client.get(f"/agent/sessions/{idle}", headers=ALICE)
                return response.status_code == 404

            await until(idle_gone, "the sweep of the idle session")

            assert await rows_of(db, old) == 0
            assert await rows_of(db, idle_run) == 0
            for kept in (recent, str(going.id)):
                response = await client.get(f"/agent/status/{kept}", headers=ALICE)
                assert response.status_code == 200, kept
            log = (await client.get(f"/agent/sessions/{in_use}", headers=ALICE)).json()
            assert len(log["runs"]) == 2  # kept whole, its old first message included
            assert await rows_of(db, first_in_use) > 0
            deleted = Delta(before, await scrape(client))
            assert deleted("agentsvc_retention_deleted_total", kind="run") == 1
            assert deleted("agentsvc_retention_deleted_total", kind="session") == 1
    finally:
        await db.dispose()


@pytest.mark.parametrize("days", [0, 0.5, -1])
def test_a_retention_under_a_day_is_refused(make_settings: SettingsFactory, days: float) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        make_settings(retention_days=days)
