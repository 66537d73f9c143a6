"""Idempotency keys of queued submissions: (user, key) names one run while the run exists
(the row goes with it, ON DELETE CASCADE)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import IdempotencyKey

idempotency_t = cast(Table, IdempotencyKey.__table__)


@dataclass(frozen=True, slots=True)
class KeyedRun:
    run_id: uuid.UUID
    request_digest: str


async def find(conn: AsyncConnection, *, user_id: str, key: str) -> KeyedRun | None:
    """The run the user's key names, if any."""
    row = (
        await conn.execute(
            select(idempotency_t.c.run_id, idempotency_t.c.request_digest).where(
                idempotency_t.c.user_id == user_id, idempotency_t.c.key == key
            )
        )
    ).first()
    return None if row is None else KeyedRun(row.run_id, row.request_digest)


async def claim(
    conn: AsyncConnection, *, user_id: str, key: str, run: KeyedRun, now: datetime
) -> bool:
    """Let the key name `run` (stored in the same transaction); False when another request
    took it first (a concurrent one waits here until that one commits or rolls back)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(idempotency_t)
        .values(
            user_id=user_id,
            key=key,
            run_id=run.run_id,
            request_digest=run.request_digest,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(idempotency_t.c.run_id)
    )
    return (await conn.execute(stmt)).first() is not None
