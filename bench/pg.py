"""The benchmark's own PostgreSQL database: create, migrate, check, count, drop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.procs import BenchError

EVENTS_PER_RUN = 3
"""run.started, llm.call, run.completed: a run of one LLM call and no tool."""


def admin_dsn(server: str) -> str:
    return f"{server}/postgres"


def app_url(server: str, name: str) -> str:
    """The SQLAlchemy URL agentsvc gets for database `name`."""
    return f"{server.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


def create_database(server: str, name: str) -> None:
    asyncio.run(_execute(admin_dsn(server), f'CREATE DATABASE "{name}"'))


def drop_database(server: str, name: str) -> None:
    asyncio.run(_execute(admin_dsn(server), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrate(env: Mapping[str, str], *, cwd: Path, timeout_s: float = 120.0) -> None:
    """`agentsvc migrate` with the benchmark's environment (same code as `serve`)."""
    agentsvc = Path(sys.executable).with_name("agentsvc")
    done = subprocess.run(
        [str(agentsvc), "migrate"],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"agentsvc migrate failed:\n{done.stdout}\n{done.stderr}")


@dataclass(frozen=True, kw_only=True)
class RunCounts:
    """What the database holds after a load phase."""

    runs: int
    by_status: dict[str, int]
    llm_call_rows: int
    event_rows: int
    runs_with_wrong_llm_rows: int
    runs_with_wrong_event_rows: int
    runs_not_one_call_no_tool: int
    mean_run_ms: float
    max_run_ms: float
    """From creation to finish, of the runs created since the time asked for."""

    def problems(self) -> list[str]:
        """Why this is not `every run completed with every trace row`; empty if it is."""
        found = []
        if self.by_status.get("completed", 0) != self.runs:
            found.append(f"not every run completed: {self.by_status}")
        if self.llm_call_rows != self.runs or self.runs_with_wrong_llm_rows:
            found.append(
                f"{self.llm_call_rows} llm_calls rows for {self.runs} runs"
                f" ({self.runs_with_wrong_llm_rows} runs with other than one)"
            )
        expected_events = EVENTS_PER_RUN * self.runs
        if self.event_rows != expected_events or self.runs_with_wrong_event_rows:
            found.append(
                f"{self.event_rows} run_events rows, expected {expected_events}"
                f" ({self.runs_with_wrong_event_rows} runs with other than {EVENTS_PER_RUN})"
            )
        if self.runs_not_one_call_no_tool:
            found.append(f"{self.runs_not_one_call_no_tool} runs made tool calls or >1 LLM call")
        return found


async def _counts(dsn: str, since: datetime | None) -> RunCounts:
    conn = await asyncpg.connect(dsn)
    try:
        statuses = await conn.fetch("SELECT status, count(*) AS n FROM runs GROUP BY status")
        timing = await conn.fetchrow(
            "SELECT coalesce(avg(extract(epoch FROM finished_at - created_at)), 0) * 1000 AS mean,"
            " coalesce(max(extract(epoch FROM finished_at - created_at)), 0) * 1000 AS max"
            " FROM runs WHERE created_at >= $1",
            since or datetime.min.replace(tzinfo=UTC),
        )
        return RunCounts(
            runs=int(await conn.fetchval("SELECT count(*) FROM runs")),
            by_status={str(r["status"]): int(r["n"]) for r in statuses},
            llm_call_rows=int(await conn.fetchval("SELECT count(*) FROM llm_calls")),
            event_rows=int(await conn.fetchval("SELECT count(*) FROM run_events")),
            runs_with_wrong_llm_rows=int(
                await conn.fetchval(
                    "SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM llm_calls c"
                    " WHERE c.run_id = r.id) <> 1"
                )
            ),
            runs_with_wrong_event_rows=int(
                await conn.fetchval(
                    "SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM run_events e"
                    f" WHERE e.run_id = r.id) <> {EVENTS_PER_RUN}"
                )
            ),
            runs_not_one_call_no_tool=int(
                await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE llm_calls <> 1 OR tool_calls <> 0"
                )
            ),
            mean_run_ms=float(timing["mean"]),
            max_run_ms=float(timing["max"]),
        )
    finally:
        await conn.close()


def counts(server: str, name: str, *, since: datetime | None = None) -> RunCounts:
    """Checks over every run; run times over those created `since`."""
    return asyncio.run(_counts(f"{server}/{name}", since))


@dataclass(frozen=True, kw_only=True)
class DbStats:
    """Cumulative counters of pg_stat_database for one database."""

    commits: int
    rollbacks: int
    sessions: int
    """Connections opened to the database."""
    inserted: int
    updated: int
    returned: int

    def minus(self, before: DbStats) -> DbStats:
        return DbStats(
            commits=self.commits - before.commits,
            rollbacks=self.rollbacks - before.rollbacks,
            sessions=self.sessions - before.sessions,
            inserted=self.inserted - before.inserted,
            updated=self.updated - before.updated,
            returned=self.returned - before.returned,
        )


async def _stats(dsn: str, name: str) -> DbStats:
    conn = await asyncpg.connect(dsn)
    try:
        # Backends flush their counters when they exit; read after the server stopped.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, sessions, tup_inserted, tup_updated, tup_returned"
            " FROM pg_stat_database WHERE datname = $1",
            name,
        )
    finally:
        await conn.close()
    if row is None:
        raise BenchError(f"no pg_stat_database row for {name}")
    return DbStats(
        commits=int(row["xact_commit"]),
        rollbacks=int(row["xact_rollback"]),
        sessions=int(row["sessions"]),
        inserted=int(row["tup_inserted"]),
        updated=int(row["tup_updated"]),
        returned=int(row["tup_returned"]),
    )


def stats(server: str, name: str) -> DbStats:
    return asyncio.run(_stats(admin_dsn(server), name))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def server_version(server: str) -> str:
    """`PostgreSQL 15.x` of the server."""
    return "PostgreSQL " + asyncio.run(_fetch_version(admin_dsn(server))).split()[0]
