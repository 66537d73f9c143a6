"""The store's fenced writes, on both paths (PostgreSQL's one-statement step, SQLite's)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.llm.types import TokenUsage
from app.runner.errors import LeaseLost
from app.runner.events import EventType, RunEvent
from app.runner.protocols import Completed, LLMCallRecord, Step
from app.runner.state import Checkpoint
from app.store.db import Database, create_engine
from app.store.run_store import SqlRunStore
from app.store.runs import events_t, insert_run, llm_calls_t, runs
from tests.conftest import SettingsFactory
from tests.support.runs import new_run


def render(event_type: str, view: object) -> str:
    return "{}"


async def make_run(db: Database) -> uuid.UUID:
    run_id = uuid.uuid4()
    now = datetime.now(UTC)
    run = new_run(
        id=run_id,
        status="running",
        input="hi",
        max_turns=3,
        timeout_s=30,
        created_at=now,
        started_at=now,
        lease_owner="me",
        lease_expires_at=now + timedelta(seconds=30),
        attempt=1,
    )
    async with db.transaction() as conn:
        await insert_run(conn, run, checkpoint=Checkpoint(next_seq=1), events=[])
    return run_id


def llm_step(run_id: uuid.UUID, *, done: bool) -> Step:
    cp = Checkpoint(turn=1, next_seq=3)
    cp.usage.llm_calls = 1
    call = LLMCallRecord(
        turn=1,
        provider="local",
        model="local-1",
        request={"messages": []},
        response={"message": {"role": "assistant", "content": "hi"}},
        usage=TokenUsage(input_tokens=10, output_tokens=2),
        cost_usd=0.0,
        priced=True,
        latency_ms=1.0,
    )
    events = [
        RunEvent(str(run_id), 1, EventType.LLM_CALL, {"turn": 1}),
        RunEvent(str(run_id), 2, EventType.RUN_COMPLETED, {"result": {"output": "hi"}}),
    ]
    return Step(
        checkpoint=cp, events=events, llm_call=call, outcome=Completed("hi") if done else None
    )


@pytest.mark.parametrize("owner", ["me", "someone-else"])
async def test_llm_step_is_fenced_by_owner_and_attempt(
    make_settings: SettingsFactory, owner: str
) -> None:
    db = Database(create_engine(make_settings().database_url, pool_size=2))
    try:
        run_id = await make_run(db)
        store = SqlRunStore(
            db, run_id=str(run_id), user_id="alice", owner=owner, attempt=1, render_webhook=render
        )
        if owner == "me":
            assert await store.commit(llm_step(run_id, done=True)) is False
            assert store.last_state is not None
            assert store.last_state.status == "completed"
            assert store.last_state.result == {"output": "hi"}
            assert store.last_state.lease_owner is None
        else:
            with pytest.raises(LeaseLost):
                await store.commit(llm_step(run_id, done=True))
        async with db.transaction() as conn:
            calls = (await conn.execute(select(func.count()).select_from(llm_calls_t))).scalar()
            events = (await conn.execute(select(func.count()).select_from(events_t))).scalar()
            row = (await conn.execute(select(runs.c.status, runs.c.event_seq))).one()
        wrote = owner == "me"
        assert calls == (1 if wrote else 0)
        assert events == (2 if wrote else 0)
        assert row.status == ("completed" if wrote else "running")
        assert row.event_seq == (3 if wrote else 1)
    finally:
        await db.dispose()


async def test_cancel_request_comes_back_from_a_step(make_settings: SettingsFactory) -> None:
    from sqlalchemy import update

    db = Database(create_engine(make_settings().database_url, pool_size=2))
    try:
        run_id = await make_run(db)
        async with db.transaction() as conn:
            await conn.execute(update(runs).values(cancel_requested=True))
        store = SqlRunStore(
            db, run_id=str(run_id), user_id="alice", owner="me", attempt=1, render_webhook=render
        )
        assert await store.commit(llm_step(run_id, done=False)) is True
        assert store.last_state is None
    finally:
        await db.dispose()
