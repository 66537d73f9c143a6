"""Shared fixtures. pytest-socket (see pyproject) refuses every non-loopback connection,
so no test can reach a real model API."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from httpx import AsyncClient

from app.settings import Settings
from app.store.migrate import upgrade
from tests.support.app import running_app

PG_ADMIN_DSN = os.environ.get(
    "AGENTSVC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
API_KEYS = "alice:alice-key,bob:bob-key,ann:ann-key:approver,root:root-key:admin"
ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}
ROOT = {"Authorization": "Bearer root-key"}

SettingsFactory = Callable[..., Settings]
TABLES = (
    "run_events, llm_calls, tool_calls, runs, sessions, api_keys, users, budget_overrides,"
    " traffic_policies, run_feedback, tool_sets, idempotency_keys"
)


def pg_execute(dsn: str, sql: str) -> None:
    """Run one statement on PostgreSQL from sync code, whether or not a loop is running."""

    async def execute() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, execute()).result()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated with Alembic."""
    name = f"agentsvc_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    pg_execute(PG_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    pg_execute(PG_ADMIN_DSN, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrating takes longer than copying)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each integration test runs on the SQLite default and on real PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "agentsvc.db"
        shutil.copyfile(template, target)
        return f"sqlite+aiosqlite:///{target}"
    url: str = request.getfixturevalue("pg_url")
    pg_execute(url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE")
    return url


@pytest.fixture
def make_settings(db_url: str, tmp_path: Path) -> SettingsFactory:
    """Settings for a test app; keyword arguments override fields."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": db_url,
            "api_keys": API_KEYS,
            "sandbox_dir": tmp_path / "sandbox",
            "sync_timeout_s": 10.0,
        }
        values.update(overrides)
        # model_validate reads no environment or .env: tests see only these values.
        return Settings.model_validate(values)

    return make


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[AsyncClient]:
    """A client of an app with default test settings."""
    async with running_app(make_settings()) as c:
        yield c
