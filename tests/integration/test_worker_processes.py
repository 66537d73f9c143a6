"""Real `agentsvc worker` processes on PostgreSQL: crashes, races, stops and shutdowns.

The model is a scripted OpenAI-compatible server on loopback; the `tally` tool
writes one line per execution, so a side effect that happened twice shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from app.settings import Settings
from tests.conftest import ALICE, API_KEYS, TABLES, pg_execute
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.support.app import running_app
from tests.support.polling import until

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    """Worker processes and an in-process API over one PostgreSQL database."""

    def __init__(self, db_url: str, model_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
        self.tmp = tmp
        self.sandbox = tmp / "sandbox"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSVC_")} | {
            "AGENTSVC_DATABASE_URL": db_url,
            "AGENTSVC_OPENAI_BASE_URL": model_url,
            "AGENTSVC_AGENTS_MODULE": "tests.support.custom_agents",
            "AGENTSVC_SANDBOX_DIR": str(self.sandbox),
            "AGENTSVC_LEASE_SECONDS": "1",
            "AGENTSVC_POLL_INTERVAL_S": "0.2",
            "AGENTSVC_WORKER_CONCURRENCY": "8",
            "AGENTSVC_LOG_LEVEL": "warning",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": self.db_url,
            "api_keys": API_KEYS,
            "embedded_workers": 0,
            "agents_module": "tests.support.custom_agents",
            "openai_base_url": self.env["AGENTSVC_OPENAI_BASE_URL"],
            "sandbox_dir": self.sandbox,
            "lease_seconds": 1,
        }
        return Settings.model_validate(values | overrides)

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                cwd=ROOT,
                env=self.env | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(10)

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def statuses(self) -> dict[str, str]:
        rows = await self.query("SELECT id::text, status FROM runs")
        return {r["id"]: r["status"] for r in rows}

    def tallies(self) -> list[str]:
        path = self.sandbox / "tally.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
async def cluster(pg_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    async with serve_app(script_app()) as base:
        c = Cluster(pg_url, f"{base}/v1", tmp_path)
        try:
            yield c
        finally:
            c.stop_all()


async def submit_all(cluster: Cluster, scripts: list[str]) -> list[str]:
    jobs = []
    async with running_app(cluster.settings()) as client:
        for script in scripts:
            response = await client.post(
                "/agent/submit", json={"agent": "worker-agent", "input": script}, headers=ALICE
            )
            assert response.status_code == 202
            jobs.append(response.json()["job_id"])
    return jobs


def all_in(cluster: Cluster, jobs: list[str], *states: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        statuses = await cluster.statuses()
        return all(statuses[j] in states for j in jobs)

    return check


async def assert_nothing_twice(cluster: Cluster, jobs: list[str]) -> None:
    """No tally line twice, no LLM turn answered twice, events numbered without gaps."""
    lines = cluster.tallies()
    assert len(lines) == len(set(lines)), lines
    repeated = await cluster.query(
        "SELECT run_id, turn, count(*) FROM llm_calls WHERE error IS NULL "
        "GROUP BY run_id, turn HAVING count(*) > 1"
    )
    assert repeated == []
    for job in jobs:
        seqs = [
            r["seq"]
            for r in await cluster.query(
                "SELECT seq FROM run_events WHERE run_id = $1::uuid ORDER BY seq", job
            )
        ]
        assert seqs == list(range(len(seqs)))
        ends = await cluster.query(
            "SELECT count(*) AS n FROM run_events WHERE run_id = $1::uuid "
            "AND type IN ('run.completed', 'run.failed', 'run.cancelled')",
            job,
        )
        assert ends[0]["n"] == 1


async def test_kill_9_mid_run_every_run_finishes_once(cluster: Cluster) -> None:
    scripts = [f"nap 0.4; tally a{i}; nap 0.4; tally b{i}; calc {i}*3" for i in range(6)]
    jobs = await submit_all(cluster, scripts)
    a = cluster.start("a")
    await until(all_in(cluster, jobs, "running"), "worker a to claim every run", timeout_s=20)
    await asyncio.sleep(0.6)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    cluster.start("b")
    await until(all_in(cluster, jobs, "completed"), "worker b to finish every run", timeout_s=60)

    await assert_nothing_twice(cluster, jobs)
    rows = await cluster.query("SELECT crashes, attempt, result FROM runs")
    assert all(r["crashes"] == 1 and r["attempt"] == 2 for r in rows)
    assert all(r["result"] is not None for r in rows)
    in_doubt = await cluster.query("SELECT name FROM tool_calls WHERE status = 'in_doubt'")
    assert {r["name"] for r in in_doubt} <= {"tally"}


async def test_two_workers_race_for_one_run(cluster: Cluster) -> None:
    (job,) = await submit_all(cluster, ["delay 0.2; nap 0.2; tally once"])
    cluster.start("a")
    cluster.start("b")
    await until(all_in(cluster, [job], "completed"), "the run to finish", timeout_s=30)
    (run,) = await cluster.query("SELECT attempt, crashes FROM runs")
    assert run["attempt"] == 1
    assert run["crashes"] == 0
    assert cluster.tallies() == [f"once {job}:2:0"]
    await assert_nothing_twice(cluster, [job])


async def test_stopped_worker_writes_nothing_after_losing_its_lease(cluster: Cluster) -> None:
    (job,) = await submit_all(cluster, ["nap 2.5; tally z"])
    a = cluster.start("a")
    await until(
        lambda: _tool_started(cluster, job, "nap"), "worker a to start the nap", timeout_s=20
    )
    a.send_signal(signal.SIGSTOP)
    cluster.start("b")
    await until(all_in(cluster, [job], "completed"), "worker b to finish the run", timeout_s=30)
    events_before = await cluster.query("SELECT seq FROM run_events ORDER BY seq")
    a.send_signal(signal.SIGCONT)
    await asyncio.sleep(3.5)  # a wakes inside its nap, finishes it, and tries to commit

    assert await cluster.query("SELECT seq FROM run_events ORDER BY seq") == events_before
    assert cluster.tallies() == [f"z {job}:2:0"]
    assert a.poll() is None, "the stopped worker should survive losing its lease"
    assert "lease lost" in cluster.log("a")
    await assert_nothing_twice(cluster, [job])


async def _claimed(cluster: Cluster, attempt: int) -> bool:
    rows = await cluster.query(
        "SELECT 1 FROM runs WHERE status = 'running' AND attempt = $1", attempt
    )
    return bool(rows)


async def _tool_started(cluster: Cluster, job: str, name: str) -> bool:
    rows = await cluster.query(
        "SELECT 1 FROM tool_calls WHERE run_id = $1::uuid AND name = $2", job, name
    )
    return bool(rows)


async def test_sigterm_finishes_the_step_and_hands_the_run_back(cluster: Cluster) -> None:
    (job,) = await submit_all(cluster, ["nap 1.5; tally w; calc 6*7"])
    a = cluster.start("a")
    await until(
        lambda: _tool_started(cluster, job, "nap"), "worker a to start the nap", timeout_s=20
    )
    a.send_signal(signal.SIGTERM)
    assert a.wait(20) == 0
    (run,) = await cluster.query("SELECT status, lease_owner, tool_calls FROM runs")
    assert run["status"] == "pending"
    assert run["lease_owner"] is None
    assert run["tool_calls"] == 1  # the nap finished and was checkpointed

    cluster.start("b")
    await until(all_in(cluster, [job], "completed"), "worker b to finish", timeout_s=30)
    (done,) = await cluster.query("SELECT crashes, result FROM runs")
    assert done["crashes"] == 0
    naps = await cluster.query("SELECT count(*) AS n FROM tool_calls WHERE name = 'nap'")
    assert naps[0]["n"] == 1
    await assert_nothing_twice(cluster, [job])


async def test_a_run_handed_back_at_sigterm_wakes_an_idle_worker(cluster: Cluster) -> None:
    (job,) = await submit_all(cluster, ["nap 4; tally w; calc 6*7"])
    a = cluster.start("a")
    await until(
        lambda: _tool_started(cluster, job, "nap"), "worker a to start the nap", timeout_s=20
    )
    # b polls only every 60 s: only the hand-back's wake-up can bring it the run in time.
    cluster.start("b", AGENTSVC_POLL_INTERVAL_S="60")

    async def both_listening() -> bool:
        rows = await cluster.query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%agentsvc_cancel%'"
        )
        return int(rows[0]["n"]) >= 2

    await until(both_listening, "worker b to listen", timeout_s=20)
    a.send_signal(signal.SIGTERM)
    assert a.wait(20) == 0
    await until(all_in(cluster, [job], "completed"), "worker b to finish", timeout_s=30)
    await assert_nothing_twice(cluster, [job])


async def test_run_that_keeps_killing_workers_ends_interrupted(cluster: Cluster) -> None:
    (job,) = await submit_all(cluster, ["nap 20"])
    for attempt, name in enumerate(("a", "b"), start=1):
        worker = cluster.start(name, AGENTSVC_MAX_ATTEMPTS="2")
        await until(partial(_claimed, cluster, attempt), f"worker {name} to claim", timeout_s=20)
        await asyncio.sleep(0.3)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    cluster.start("c", AGENTSVC_MAX_ATTEMPTS="2")
    await until(all_in(cluster, [job], "failed"), "the run to be given up", timeout_s=20)
    (run,) = await cluster.query("SELECT error, crashes FROM runs")
    assert run["crashes"] == 2
    assert '"interrupted"' in run["error"]
