"""Two real `agentsvc serve` processes over one PostgreSQL and one Redis: a run executed
by one streams live from the other, and survives Redis losing its events mid-run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from tests.conftest import ALICE, API_KEYS, TABLES, pg_execute
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.integration.test_cli import free_port
from tests.integration.test_stream import TEST_REDIS
from tests.support.processes import start_agentsvc, stop_all, wait_ready
from tests.support.sse import SSEvent, collect, parse

pytestmark = pytest.mark.postgres


@dataclass
class Replicas:
    runner: str
    """Base URL of the replica with a worker: it executes runs."""
    other: str
    """Base URL of the replica without workers: it only serves HTTP."""


@pytest.fixture
async def replicas(pg_url: str, tmp_path: Path) -> AsyncIterator[Replicas]:
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    async with serve_app(script_app()) as model_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSVC_")} | {
            "AGENTSVC_DATABASE_URL": pg_url,
            "AGENTSVC_REDIS_URL": TEST_REDIS,
            "AGENTSVC_API_KEYS": API_KEYS,
            "AGENTSVC_OPENAI_BASE_URL": f"{model_url}/v1",
            "AGENTSVC_AGENTS_MODULE": "tests.support.custom_agents",
            "AGENTSVC_SANDBOX_DIR": str(tmp_path / "sandbox"),
            "AGENTSVC_LOG_LEVEL": "warning",
        }
        ports = free_port(), free_port()
        procs = [
            start_agentsvc(
                "serve", env=env | {"AGENTSVC_PORT": str(ports[0])}, log=tmp_path / "runner.log"
            ),
            start_agentsvc(
                "serve",
                env=env | {"AGENTSVC_PORT": str(ports[1]), "AGENTSVC_EMBEDDED_WORKERS": "0"},
                log=tmp_path / "other.log",
            ),
        ]
        try:
            bases = [f"http://127.0.0.1:{p}" for p in ports]
            await asyncio.gather(*(wait_ready(b) for b in bases))
            yield Replicas(*bases)
        finally:
            stop_all(procs)


async def _stream_on_runner_attach_on_other(
    replicas: Replicas, script: str, *, on_other_event: str | None = None
) -> tuple[list[SSEvent], list[SSEvent]]:
    """Run `script` through the runner's POST /agent/stream; attach on the other replica
    after `run.started`; FLUSHDB Redis when the other sees `on_other_event`."""
    attached: asyncio.Task[list[SSEvent]] | None = None

    async def follow_on_other(job: str) -> list[SSEvent]:
        seen: list[SSEvent] = []
        async with httpx.AsyncClient(base_url=replicas.other, headers=ALICE, timeout=30) as c:
            async with c.stream("GET", f"/agent/stream/{job}") as response:
                assert response.status_code == 200
                async for event in parse(response):
                    if event.id is None:
                        continue
                    seen.append(event)
                    if event.event == on_other_event:
                        flusher = redis.Redis.from_url(TEST_REDIS)
                        await flusher.flushdb()
                        await flusher.aclose()
        return seen

    body = {"agent": "worker-agent", "input": script}
    async with httpx.AsyncClient(base_url=replicas.runner, headers=ALICE, timeout=30) as client:
        async with client.stream("POST", "/agent/stream", json=body) as response:
            assert response.status_code == 200
            live: list[SSEvent] = []
            async for event in parse(response):
                if event.id is None:
                    continue
                live.append(event)
                if event.event == "run.started":
                    attached = asyncio.create_task(follow_on_other(str(event.json()["job_id"])))
    assert attached is not None
    return live, await attached


def _same(a: list[SSEvent], b: list[SSEvent]) -> None:
    assert [(e.seq, e.event, e.json()) for e in a] == [(e.seq, e.event, e.json()) for e in b]


async def test_the_replica_that_does_not_run_the_job_streams_it_live(replicas: Replicas) -> None:
    live, other = await _stream_on_runner_attach_on_other(
        replicas, "nap 0.3; pace 0.15; say alpha beta gamma delta epsilon"
    )
    _same(live, other)
    assert [e.seq for e in other] == list(range(len(other)))
    deltas = [e for e in other if e.event == "llm.delta"]
    assert "".join(str(d.json()["text"]) for d in deltas) == "alpha beta gamma delta epsilon"
    # Deltas reach the database only with the call's commit: these came over Redis, live.
    final_call = next(e for e in live if e.event == "llm.call" and e.json()["turn"] == 2)
    assert deltas[0].at < final_call.at


async def test_stream_completes_from_the_database_after_redis_lost_everything(
    replicas: Replicas,
) -> None:
    live, other = await _stream_on_runner_attach_on_other(
        replicas,
        "nap 0.3; nap 0.3; pace 0.05; say one two three",
        on_other_event="tool.result",
    )
    _same(live, other)
    async with httpx.AsyncClient(base_url=replicas.other, headers=ALICE, timeout=30) as c:
        async with c.stream("GET", f"/agent/stream/{live[0].json()['job_id']}") as response:
            replay = await collect(response)
    _same(replay, other)
