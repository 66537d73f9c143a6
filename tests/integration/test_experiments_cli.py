"""`agentsvc experiments report`: the route's numbers as tables or as the route's JSON."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from app.store.db import Database, create_engine
from tests.conftest import ROOT, SettingsFactory
from tests.support.app import running_app
from tests.support.experiment_runs import Seed, seed_runs


def seed(db_url: str, now: datetime) -> None:
    """Stable version 1: 2 completed (one rated up), 1 failed; version 2: 1 completed."""
    ago = [now - timedelta(minutes=m) for m in range(1, 5)]
    runs = [
        Seed(version="1", status="completed", created_at=ago[0], latency_s=1.0, turns=2,
             input_tokens=100, output_tokens=20, cost_usd=0.001, rating="up"),
        Seed(version="1", status="completed", created_at=ago[1], latency_s=3.0, turns=2,
             input_tokens=100, output_tokens=20, cost_usd=0.001),
        Seed(version="1", status="failed", created_at=ago[2], latency_s=2.0, turns=1,
             input_tokens=50, cost_usd=0.0005, error_type="timeout", tools=["error"]),
        Seed(version="2", status="completed", created_at=ago[3], latency_s=1.0, turns=1,
             input_tokens=40, cost_usd=0.0002),
    ]  # fmt: skip

    async def write() -> None:
        db = Database(create_engine(db_url))
        try:
            await seed_runs(db, runs)
        finally:
            await db.dispose()

    asyncio.run(write())


def agentsvc(db_url: str, *args: str) -> Result:
    env = {"AGENTSVC_DATABASE_URL": db_url, "AGENTSVC_LOG_LEVEL": "warning"}
    return CliRunner().invoke(cli, list(args), env=env)


def test_report_prints_a_table_per_group_kind(db_url: str) -> None:
    seed(db_url, datetime.now(UTC))

    result = agentsvc(db_url, "experiments", "report", "assistant", "--since", "2h")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "agent assistant: runs created" in out
    assert "(4 read)" in out
    assert "policy: stable 1" in out
    versions = out[out.index("versions") : out.index("variants")]
    stable = next(line for line in versions.splitlines() if line.strip().startswith("1 *"))
    # 3 finished, none in flight, 2 of 3 succeeded, p50 2000 ms, 1 of 1 tool call failed,
    # 1 of 1 rating up.
    assert stable.split()[2:6] == ["3", "0", "66.7%", "(3)"]
    assert "2000" in stable.split()
    assert stable.split()[-4:] == ["100.0%", "(1)", "100.0%", "(1)"]
    assert "1 errors: timeout 1" in versions
    canary = next(line for line in versions.splitlines() if line.strip().startswith("2 "))
    # Version 2 (1 of 1) against stable (2 of 3): +33.3 points.
    assert "+33.3 pts" in canary
    assert "(no runs)" in out[out.index("variants") :]


async def test_json_is_the_routes_answer(make_settings: SettingsFactory, db_url: str) -> None:
    now = datetime.now(UTC)
    await asyncio.to_thread(seed, db_url, now)
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}

    result = await asyncio.to_thread(
        agentsvc,
        db_url,
        *("experiments", "report", "assistant", "--json"),
        *("--since", window["since"], "--until", window["until"]),
    )
    async with running_app(make_settings()) as client:
        route = await client.get("/agent/experiments/assistant", params=window, headers=ROOT)

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == route.json()
    assert [(g["version"], g["runs"], g["completed"]) for g in printed["versions"]] == [
        ("1", 3, 2),
        ("2", 1, 1),
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("assistant", "--since", "yesterday"), 2, "neither a duration"),
        (("assistant", "--until", "2025-06-01T00:00:00"), 2, "needs a timezone"),
        (("assistant", "--since", "100d"), 1, "longer than 90 days"),
        (("nobody",), 1, "agent nobody not found"),
    ],
)
def test_bad_arguments_are_refused(
    db_url: str, args: tuple[str, ...], code: int, message: str
) -> None:
    result = agentsvc(db_url, "experiments", "report", *args)

    assert result.exit_code == code
    assert message in " ".join(result.stderr.split()), result.stderr
