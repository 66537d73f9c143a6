"""Circuit breakers shared by real `agentsvc serve` processes through Redis: one opens the
breaker, another fails fast without calling the model, a third probes and closes it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from tests.conftest import ALICE, API_KEYS, ROOT, TABLES, pg_execute
from tests.fakes.llm_server import ErrorReply, FakeLLMServer, TextReply, serve_fake_openai
from tests.integration.test_cli import free_port
from tests.integration.test_resilience import TEST_REDIS
from tests.support.processes import start_agentsvc, stop_all, wait_ready

pytestmark = pytest.mark.postgres
TARGET = "llm:openai/primary"


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_openai() as server:
        yield server


@pytest.fixture
async def replicas(
    pg_url: str, fake: FakeLLMServer, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """Base URLs of processes `a` and `b` (a 60 s cool-down) and `c` (no cool-down)."""
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    flusher = redis.Redis.from_url(TEST_REDIS)
    await flusher.flushdb()
    await flusher.aclose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSVC_")} | {
        "AGENTSVC_DATABASE_URL": pg_url,
        "AGENTSVC_REDIS_URL": TEST_REDIS,
        "AGENTSVC_API_KEYS": API_KEYS,
        "AGENTSVC_OPENAI_BASE_URL": fake.base_url,
        "AGENTSVC_DEFAULT_MODEL": "openai/primary",
        "AGENTSVC_SANDBOX_DIR": str(tmp_path / "sandbox"),
        "AGENTSVC_LLM_RETRY_ATTEMPTS": "1",
        "AGENTSVC_BREAKER_FAILURE_THRESHOLD": "2",
        "AGENTSVC_LOG_LEVEL": "warning",
    }
    bases: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cooldown in (("a", "60"), ("b", "60"), ("c", "0")):
            port = free_port()
            extra = {"AGENTSVC_PORT": str(port), "AGENTSVC_BREAKER_COOLDOWN_S": cooldown}
            procs.append(start_agentsvc("serve", env=env | extra, log=tmp_path / f"{name}.log"))
            bases[name] = f"http://127.0.0.1:{port}"
        await asyncio.gather(*(wait_ready(base) for base in bases.values()))
        yield bases
    finally:
        stop_all(procs)


async def ask(base: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.post(
            "/agent", json={"agent": "assistant", "input": "hi"}, headers=ALICE
        )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def breaker_state(base: str) -> tuple[str, bool]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        listed = (await client.get("/agent/admin/breakers", headers=ROOT)).json()
    states = {b["target"]: b["state"] for b in listed["breakers"]}
    return states[TARGET], listed["shared"]


def message_of(body: dict[str, object]) -> str:
    assert body["status"] == "failed", body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "llm_unavailable"
    return str(error["message"])


async def test_processes_share_open_half_open_and_closed(
    replicas: dict[str, str], fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(503, "down"), ErrorReply(503, "down"), TextReply("probe ok"))
    a, b, c = replicas["a"], replicas["b"], replicas["c"]

    for _ in range(2):
        assert "ProviderServerError" in message_of(await ask(a))
    assert await breaker_state(b) == ("open", True)  # b saw no failure itself

    refused = message_of(await ask(b))
    assert "circuit breaker open" in refused
    assert len(fake.requests) == 2  # b failed fast: no call reached the model
    async with httpx.AsyncClient(base_url=b) as client:
        exported = (await client.get("/metrics")).text
    assert f'agentsvc_breaker_state{{target="{TARGET}"}} 2.0' in exported

    # c has no cool-down: its call is the half-open probe; the model answers and it closes.
    assert (await ask(c))["result"] == {"output": "probe ok"}
    assert await breaker_state(a) == ("closed", True)
    assert (await ask(a))["status"] == "completed"  # a's own 60 s cool-down does not apply
    assert len(fake.requests) == 4
