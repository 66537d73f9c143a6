"""PostgreSQL's fast path for the two writes every run makes: its start, and each LLM step.

Each is one statement on the driver connection (atomic on its own, no BEGIN/COMMIT
round trips, nothing for SQLAlchemy to build or compile). The step statement keeps the
lease fence: when the UPDATE matches no row, the inserts that read from it insert
nothing and no row comes back. Other writes, and every write on SQLite, take the
general path in `run_store.py` and `runs.py`; both paths write the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from app.runner.events import RunEvent
from app.store.db import is_unavailable, json_dumps
from app.store.runs import runs

RUN_COLUMNS = tuple(c.name for c in runs.c)
_JSON_RUN_COLUMNS = frozenset({"metadata", "result", "error", "checkpoint", "feedback"})

_EVENTS_FROM = (
    "INSERT INTO run_events (run_id, seq, type, data, created_at) "
    "SELECT {src}.id, (x->>'seq')::int, x->>'type', x->'data', ${at} "
    "FROM {src}, jsonb_array_elements(${events}::jsonb) AS x"
)

START_RUN = (
    f"WITH r AS (INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(RUN_COLUMNS)))}) RETURNING id) "
    + _EVENTS_FROM.format(src="r", at=len(RUN_COLUMNS) + 1, events=len(RUN_COLUMNS) + 2)
)

SUBMIT_RUN = (
    f"WITH r AS (INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(RUN_COLUMNS)))}) RETURNING id), "
    "e AS ("
    + _EVENTS_FROM.format(src="r", at=len(RUN_COLUMNS) + 1, events=len(RUN_COLUMNS) + 2)
    + f") SELECT pg_notify(${len(RUN_COLUMNS) + 3}, '') FROM r"
)
"""A queued run, its first events and the workers' wake-up: sent at the commit that makes
the run visible, as the statement commits alone."""

CLAIM_RUNS = (
    "WITH picked AS (SELECT id FROM runs WHERE status = 'pending'"
    " ORDER BY priority DESC, created_at LIMIT $1 FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE runs SET status = 'running', lease_owner = $2, lease_expires_at = $3,"
    " attempt = runs.attempt + 1, started_at = COALESCE(runs.started_at, $4)"
    " FROM picked WHERE runs.id = picked.id RETURNING runs.*),"
    " told AS (SELECT pg_notify($5, $2 || ' ' || count(*) || ' ' || $1::bigint) AS sent"
    " FROM claimed HAVING count(*) > 0)"
    " SELECT claimed.* FROM claimed LEFT JOIN told ON true"
)
"""Take pending runs, most urgent and oldest first, under a lease: atomic on its own. When
it took any, it tells every worker `<owner> <taken> <asked>` on $5 at its commit."""

LLM_CALL_COLUMNS = (
    "turn",
    "provider",
    "model",
    "request",
    "response",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "priced",
    "latency_ms",
    "error",
    "cache_hit",
)

LLM_STEP = (
    "WITH u AS (UPDATE runs SET checkpoint = $4, event_seq = $5, turns = $6,"
    " input_tokens = $7, output_tokens = $8, cached_tokens = $9, cost_usd = $10,"
    " llm_calls = $11, tool_calls = $12,"
    " status = COALESCE($13::varchar, status), result = COALESCE($14::jsonb, result),"
    " error = COALESCE($15::jsonb, error),"
    " finished_at = COALESCE($16::timestamptz, finished_at),"
    " lease_owner = CASE WHEN $13::varchar IS NULL THEN lease_owner END,"
    " lease_expires_at = CASE WHEN $13::varchar IS NULL THEN lease_expires_at END"
    " WHERE id = $1 AND lease_owner = $2 AND attempt = $3 RETURNING *),"
    f" l AS (INSERT INTO llm_calls (run_id, {', '.join(LLM_CALL_COLUMNS)}, created_at)"
    " SELECT u.id, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30"
    " FROM u),"
    " t AS (INSERT INTO tool_sets (digest, tools, created_at) SELECT $32, $33::jsonb, $30"
    " FROM u WHERE $33::jsonb IS NOT NULL ON CONFLICT DO NOTHING),"
    " e AS (" + _EVENTS_FROM.format(src="u", at=30, events=31) + ")"
    " SELECT * FROM u"
)


def json_text(value: object) -> str | None:
    """JSON(B) parameters go to the driver as text (SQLAlchemy's codec on the connection)."""
    return None if value is None else json_dumps(value)


def llm_call_args(values: Mapping[str, object]) -> tuple[object, ...]:
    """The trace row's values in statement order, JSON as text."""
    return tuple(
        json_text(values[c]) if c in ("request", "response") else values[c]
        for c in LLM_CALL_COLUMNS
    )


def events_text(events: Sequence[RunEvent]) -> str:
    return json_dumps([{"seq": e.seq, "type": e.type.value, "data": e.data} for e in events])


@asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[object]:
    """The asyncpg connection of a pooled connection, outside any transaction. Taken from
    the pool raw: an SQLAlchemy Connection around it costs 40 µs of CPU per statement."""
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except Exception as exc:
        # SQLAlchemy does not see the driver's errors: a dead connection must not go
        # back to the pool for the next unit of work to fail on.
        if is_unavailable(exc):
            await greenlet_spawn(pooled.invalidate, exc)
        raise
    finally:
        await greenlet_spawn(pooled.close)


async def start_run(
    engine: AsyncEngine, values: Mapping[str, object], events: Sequence[RunEvent], at: datetime
) -> None:
    """Insert a run (`values` holds every column) and its first events, in one statement."""
    args = [json_text(values[c]) if c in _JSON_RUN_COLUMNS else values[c] for c in RUN_COLUMNS]
    async with driver(engine) as conn:
        await conn.execute(START_RUN, *args, at, events_text(events))  # type: ignore[attr-defined]


async def submit_run(
    engine: AsyncEngine,
    values: Mapping[str, object],
    events: Sequence[RunEvent],
    at: datetime,
    *,
    channel: str,
) -> None:
    """Queue a run (`values` holds every column) with its first events, and wake the
    workers listening on `channel`: one statement."""
    args = [json_text(values[c]) if c in _JSON_RUN_COLUMNS else values[c] for c in RUN_COLUMNS]
    async with driver(engine) as conn:
        await conn.execute(SUBMIT_RUN, *args, at, events_text(events), channel)  # type: ignore[attr-defined]


async def claim_runs(
    engine: AsyncEngine,
    *,
    owner: str,
    lease_expires_at: datetime,
    limit: int,
    now: datetime,
    channel: str,
) -> list[Mapping[str, object]]:
    """Claimed runs as whole rows; the workers listening on `channel` hear how many."""
    async with driver(engine) as conn:
        rows = await conn.fetch(CLAIM_RUNS, limit, owner, lease_expires_at, now, channel)  # type: ignore[attr-defined]
    return [dict(r) for r in rows]


async def llm_step(
    engine: AsyncEngine,
    *,
    fence: tuple[uuid.UUID, str, int],
    progress: Sequence[object],
    ending: tuple[str | None, str | None, str | None, datetime | None],
    llm_call: Sequence[object],
    at: datetime,
    events: Sequence[RunEvent],
    tool_set: tuple[str, list[object]] | None,
) -> Mapping[str, object] | None:
    """Checkpoint, trace row, events, maybe the end of a run and the tool set its request
    names (digest, tools; None: known to be stored), fenced by (owner, attempt). None when
    the run is no longer held by this owner at this attempt."""
    digest, tools = (None, None) if tool_set is None else (tool_set[0], json_text(tool_set[1]))
    async with driver(engine) as conn:
        row = await conn.fetchrow(  # type: ignore[attr-defined]
            LLM_STEP, *fence, *progress, *ending, *llm_call, at, events_text(events), digest, tools
        )
    return None if row is None else dict(row)
