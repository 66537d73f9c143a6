"""The experiments report's reads: an agent's runs in a time window, narrowly.

Three queries whatever the window holds: the runs (newest first, through
ix_runs_agent_created, capped); their tool calls counted by status and by the keys the
report groups runs by (one aggregate); and the live runs the window's shadow runs copied
(their primaries, which may have been created before the window opened).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from itertools import starmap

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from app.store.models import Run, ToolCallRow, json_text

MAX_ROWS = 200_000
"""Runs one report reads at most (the newest of the window): a few seconds of work and
some tens of MB, whatever the window's size."""


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the report needs of one run."""

    id: uuid.UUID
    agent_version: str
    experiment: str | None
    variant: str | None
    shadow_of: uuid.UUID | None
    status: str
    error_type: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    turns: int
    tokens: int
    """Input plus output tokens."""
    cost_usd: float
    rating: str | None
    """The owner's current thumbs up or down, if any."""
    output: str | None
    """The result's text, read for shadow runs only (for matching with the primary)."""


@dataclass(frozen=True, slots=True)
class PrimaryFacts:
    """What a shadow run is compared with: the live run it copied."""

    id: uuid.UUID
    status: str
    error_type: str | None
    output: str | None


@dataclass(frozen=True, slots=True)
class ToolCount:
    """Tool calls of one status made by the window's runs of one group."""

    agent_version: str
    experiment: str | None
    variant: str | None
    shadow: bool
    status: str
    calls: int


@dataclass(frozen=True, kw_only=True)
class WindowRuns:
    runs: list[RunFacts]
    """Newest first."""
    truncated: bool
    """More runs were in the window than `runs` holds: the oldest were left out."""
    tool_counts: list[ToolCount]
    """Tool calls of the runs read, by the runs' version, variant and kind, and status."""
    primaries: dict[uuid.UUID, PrimaryFacts]
    """The primaries of the shadow runs in `runs`, by id."""


async def read_window(
    conn: AsyncConnection,
    agent: str,
    *,
    since: datetime,
    until: datetime,
    max_rows: int = MAX_ROWS,
) -> WindowRuns:
    """The agent's runs created in [since, until), newest first, at most `max_rows`."""
    in_window = and_(Run.agent == agent, Run.created_at >= since, Run.created_at < until)
    rows = await conn.execute(
        select(
            Run.id,
            Run.agent_version,
            Run.experiment,
            Run.variant,
            Run.shadow_of,
            Run.status,
            json_text(Run.error, "type").label("error_type"),
            Run.created_at,
            Run.started_at,
            Run.finished_at,
            Run.turns,
            (Run.input_tokens + Run.output_tokens).label("tokens"),
            Run.cost_usd,
            json_text(Run.feedback, "rating").label("rating"),
            # Only shadow runs' outputs are compared: live runs' results stay unread.
            case((Run.shadow_of.is_not(None), json_text(Run.result, "output")), else_=None).label(
                "output"
            ),
        )
        .where(in_window)
        .order_by(Run.created_at.desc())
        .limit(max_rows + 1)
    )
    # Positional: a mapping per row costs more than the rest of the report.
    runs = list(starmap(RunFacts, rows.all()))
    truncated = len(runs) > max_rows
    if truncated:
        runs = runs[:max_rows]
        # The other queries read the same slice of the window (ties at the edge may add
        # a run or two there; they are looked up by id, so they are ignored).
        in_window = and_(in_window, Run.created_at >= runs[-1].created_at)
    return WindowRuns(
        runs=runs,
        truncated=truncated,
        tool_counts=await _tool_counts(conn, in_window),
        primaries=await _primaries(conn, in_window),
    )


async def _tool_counts(conn: AsyncConnection, in_window: ColumnElement[bool]) -> list[ToolCount]:
    # Counted by the keys the report groups runs by, not per run: a few rows, not one per run.
    keys = (Run.agent_version, Run.experiment, Run.variant, Run.shadow_of.is_not(None))
    rows = await conn.execute(
        select(*keys, ToolCallRow.status, func.count())
        .join(Run, Run.id == ToolCallRow.run_id)
        .where(in_window)
        .group_by(*keys, ToolCallRow.status)
    )
    return [
        ToolCount(
            agent_version=version,
            experiment=experiment,
            variant=variant,
            shadow=bool(shadow),
            status=status,
            calls=calls,
        )
        for version, experiment, variant, shadow, status, calls in rows
    ]


async def _primaries(
    conn: AsyncConnection, in_window: ColumnElement[bool]
) -> dict[uuid.UUID, PrimaryFacts]:
    primary = aliased(Run)
    rows = await conn.execute(
        select(
            primary.id,
            primary.status,
            json_text(primary.error, "type"),
            json_text(primary.result, "output"),
        )
        .join(Run, Run.shadow_of == primary.id)
        .where(in_window, Run.shadow_of.is_not(None))
    )
    return {
        run_id: PrimaryFacts(id=run_id, status=status, error_type=error_type, output=output)
        for run_id, status, error_type, output in rows
    }
