"""The jobs benchmark's reads of its database: the queue while it drains, each run's
timestamps, and the agentsvc processes listening for wake-ups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.bus.wakeups import LISTEN_APPLICATION
from bench.pg import admin_dsn
from bench.procs import BenchError


@dataclass(frozen=True, kw_only=True)
class QueueSample:
    """Runs created since a moment, by state, at `at_s` seconds into a watch."""

    at_s: float
    created: int
    pending: int
    running: int
    ended: int


QUEUE_SQL = (
    "SELECT count(*) AS created,"
    " count(*) FILTER (WHERE status = 'pending') AS pending,"
    " count(*) FILTER (WHERE status = 'running') AS running,"
    " count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')) AS ended"
    " FROM runs WHERE user_id = $2 AND created_at >= $1"
)
"""On the (user_id, created_at) index: the phase's rows only, not the whole table."""


async def _watch(
    dsn: str,
    user: str,
    since: datetime,
    done: Callable[[QueueSample], bool],
    interval_s: float,
    timeout_s: float,
) -> list[QueueSample]:
    conn = await asyncpg.connect(dsn)
    try:
        # A generic plan would not know that `since` selects only the newest rows.
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        started = time.monotonic()
        samples: list[QueueSample] = []
        while True:
            row = await conn.fetchrow(QUEUE_SQL, since, user)
            at = time.monotonic() - started
            sample = QueueSample(
                at_s=at,
                created=int(row["created"]),
                pending=int(row["pending"]),
                running=int(row["running"]),
                ended=int(row["ended"]),
            )
            samples.append(sample)
            if done(sample):
                return samples
            if at >= timeout_s:
                raise BenchError(f"gave up after {timeout_s:g} s; the queue: {sample}")
            await asyncio.sleep(interval_s)
    finally:
        await conn.close()


def watch_queue(
    server: str,
    name: str,
    *,
    user: str,
    since: datetime,
    done: Callable[[QueueSample], bool],
    interval_s: float = 0.5,
    timeout_s: float = 300.0,
) -> list[QueueSample]:
    """Sample `user`'s runs created `since` every `interval_s` (one connection, one
    statement each) until `done(sample)`; a BenchError after `timeout_s`."""
    return asyncio.run(_watch(f"{server}/{name}", user, since, done, interval_s, timeout_s))


@dataclass(frozen=True, kw_only=True)
class JobTimes:
    """One run's timestamps, all written by agentsvc with Python UTC clocks."""

    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


async def _job_times(dsn: str, since: datetime, until: datetime) -> list[JobTimes]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, created_at, started_at, finished_at FROM runs"
            " WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
            since,
            until,
        )
    finally:
        await conn.close()
    return [
        JobTimes(
            status=str(r["status"]),
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
        )
        for r in rows
    ]


def job_times(server: str, name: str, *, since: datetime, until: datetime) -> list[JobTimes]:
    """Every run created in [since, until), oldest first."""
    return asyncio.run(_job_times(f"{server}/{name}", since, until))


async def _listeners(dsn: str, name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                " AND application_name LIKE $2 || ' %'",
                name,
                LISTEN_APPLICATION,
            )
        )
    finally:
        await conn.close()


def listeners(server: str, name: str) -> int:
    """The LISTEN sessions on database `name` (by their application name; their last
    statement may be a liveness check): one per agentsvc process up and waiting for wake-ups."""
    return asyncio.run(_listeners(admin_dsn(server), name))
