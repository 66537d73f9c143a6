"""Runs with known outcomes, written through the store, for the experiments report tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, insert, update

from app.store.db import Database
from app.store.models import Run, ToolCallRow
from app.store.runs import insert_run
from tests.support.runs import new_run

runs_t = cast(Table, Run.__table__)
tool_calls_t = cast(Table, ToolCallRow.__table__)


@dataclass(kw_only=True)
class Seed:
    """One run: what it is, how it ended, what it cost."""

    version: str
    status: str
    created_at: datetime
    agent: str = "assistant"
    experiment: str | None = None
    variant: str | None = None
    shadow_of: Seed | None = None
    latency_s: float | None = None
    """finished_at - started_at; None: not finished (or never started)."""
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error_type: str | None = None
    output: str | None = None
    rating: str | None = None
    tools: Sequence[str] = ()
    """The statuses of the run's tool calls, in order."""
    id: uuid.UUID = field(default_factory=uuid.uuid4)


async def seed_runs(db: Database, seeds: Sequence[Seed]) -> None:
    """Insert every run (primaries before the shadows that copy them)."""
    async with db.transaction() as conn:
        for seed in seeds:
            await insert_run(
                conn,
                new_run(
                    id=seed.id,
                    agent=seed.agent,
                    agent_version=seed.version,
                    created_at=seed.created_at,
                    experiment=seed.experiment,
                    variant=seed.variant,
                    shadow_of=None if seed.shadow_of is None else seed.shadow_of.id,
                ),
            )
            started = seed.created_at + timedelta(seconds=1)
            finished = (
                None if seed.latency_s is None else started + timedelta(seconds=seed.latency_s)
            )
            await conn.execute(
                update(runs_t)
                .where(runs_t.c.id == seed.id)
                .values(
                    status=seed.status,
                    started_at=None if seed.status == "pending" else started,
                    finished_at=finished,
                    turns=seed.turns,
                    input_tokens=seed.input_tokens,
                    output_tokens=seed.output_tokens,
                    cost_usd=seed.cost_usd,
                    error=None
                    if seed.error_type is None
                    else {"type": seed.error_type, "message": "it broke"},
                    result=None if seed.output is None else {"output": seed.output},
                    feedback=None
                    if seed.rating is None
                    else {"rating": seed.rating, "comment": None, "tags": [], "created_at": None},
                )
            )
            for index, status in enumerate(seed.tools):
                await conn.execute(
                    insert(tool_calls_t).values(
                        run_id=seed.id,
                        idempotency_key=f"{seed.id}:1:{index}",
                        turn=1,
                        call_index=index,
                        call_id=f"call_{index}",
                        name="calculator",
                        arguments={"expression": "1+1"},
                        status=status,
                        result=None,
                        latency_ms=1.0,
                        created_at=seed.created_at,
                    )
                )
