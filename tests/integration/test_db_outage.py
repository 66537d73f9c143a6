"""The database goes away and comes back (a restart, a failover) while runs are under way:
played by a TCP proxy between the service and PostgreSQL that closes every connection and
refuses new ones for a while. Runs resume from their last checkpoint instead of failing,
the pool replaces the dead connections, and requests meanwhile answer 503, not 500."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from app.observability.logs import RUN_ID
from app.store.db import Database, create_engine
from app.store.runs import llm_calls_t, runs, tool_calls_t
from tests.conftest import ALICE, TABLES, SettingsFactory, pg_execute
from tests.fakes.llm_server import TextReply, ToolCallReply, serve_fake_openai
from tests.integration.test_jobs import FAST, submit, wait_status
from tests.support.app import running_app
from tests.support.polling import until
from tests.support.tcp_proxy import CuttableProxy, cuttable_proxy

pytestmark = pytest.mark.postgres


class RunIdsSeen(logging.Handler):
    """Records each log line's message with the run id its task was driving."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().split(": ", 1)[-1]
        self.seen.append((message, RUN_ID.get()))


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[CuttableProxy]:
    url = make_url(pg_url)
    async with cuttable_proxy(url.host or "127.0.0.1", url.port or 5432) as p:
        yield p


@pytest.fixture
def db_url(pg_url: str, proxy: CuttableProxy) -> str:
    """The test database, reached through the proxy (PostgreSQL only: SQLite has no
    connections to lose)."""
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    return make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)


async def test_a_run_whose_write_finds_the_database_gone_resumes(
    make_settings: SettingsFactory, pg_url: str, proxy: CuttableProxy
) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(
            ToolCallReply("calculator", {"expression": "17*23"}),
            TextReply("391", delay_s=0.3),  # its write finds the database gone
            TextReply("391"),  # asked again once the run resumes
        )
        settings = make_settings(
            default_model="openai/gpt-4o-mini", openai_base_url=fake.base_url, **FAST
        )
        named = RunIdsSeen()
        logging.getLogger("app.jobs.executor").addHandler(named)
        try:
            async with running_app(settings) as client:
                job = await submit(client, "What is 17*23?")

                async def second_call() -> bool:
                    return len(fake.requests) == 2

                await until(second_call, what="the second LLM call")
                await proxy.cut(refuse_s=1.5)
                await asyncio.sleep(1.6)
                body = await wait_status(client, job, "completed", "failed")
        finally:
            logging.getLogger("app.jobs.executor").removeHandler(named)
        # Lines logged while driving the run name it (JSON logs carry it as run_id).
        assert ("database unreachable; handing it back", job) in named.seen
        assert body["status"] == "completed", body
        assert body["result"] == {"output": "391"}
        assert len(fake.requests) == 3  # only the call whose write was lost is repeated
    database = Database(create_engine(pg_url, pool_size=1))
    try:
        async with database.read() as conn:
            run_id = uuid.UUID(job)
            run = (await conn.execute(select(runs).where(runs.c.id == run_id))).one()
            tools = (
                await conn.execute(select(tool_calls_t).where(tool_calls_t.c.run_id == run_id))
            ).all()
            llm_calls = (
                await conn.execute(select(llm_calls_t).where(llm_calls_t.c.run_id == run_id))
            ).all()
    finally:
        await database.dispose()
    assert (run.attempt, run.crashes) == (2, 0)  # handed back, not taken for a crash
    assert [(t.name, t.status) for t in tools] == [("calculator", "ok")]  # ran once
    assert len(llm_calls) == 2  # the lost call left no trace row: it never committed


async def test_requests_answer_503_while_the_database_is_away_and_200_after(
    make_settings: SettingsFactory, proxy: CuttableProxy
) -> None:
    async with running_app(make_settings(**FAST)) as client:
        job = await submit(client, "What is 17*23?")
        await wait_status(client, job, "completed")
        await proxy.cut(refuse_s=30)
        response = await client.get(f"/agent/status/{job}", headers=ALICE)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"] == "service_unavailable"
        await proxy.cut(refuse_s=0)  # back: the pool replaces what it lost
        for _ in range(3):
            response = await client.get(f"/agent/status/{job}", headers=ALICE)
            assert response.status_code == 200, response.text
        job = await submit(client, "What is 2+2?")
        body = await wait_status(client, job, "completed", "failed")
        assert body["status"] == "completed", body


async def test_a_sync_request_waits_for_its_handed_back_run(
    make_settings: SettingsFactory, proxy: CuttableProxy
) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(
            ToolCallReply("calculator", {"expression": "17*23"}),
            TextReply("391", delay_s=0.3),
            TextReply("391"),
        )
        settings = make_settings(
            default_model="openai/gpt-4o-mini", openai_base_url=fake.base_url, **FAST
        )
        async with running_app(settings) as client:
            asked = asyncio.create_task(
                client.post(
                    "/agent", json={"agent": "assistant", "input": "What is 17*23?"}, headers=ALICE
                )
            )

            async def second_call() -> bool:
                return len(fake.requests) == 2

            await until(second_call, what="the second LLM call")
            await proxy.cut(refuse_s=1.0)
            response = await asked
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert response.json()["result"] == {"output": "391"}
        assert len(fake.requests) == 3
