"""Per-user token budget overrides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import BudgetOverride

overrides_t = cast(Table, BudgetOverride.__table__)


@dataclass(frozen=True, kw_only=True)
class OverrideRecord:
    user_id: str
    tokens_per_window: int | None
    """None: unlimited."""
    updated_at: datetime
    updated_by: str


async def get_override(conn: AsyncConnection, user_id: str) -> OverrideRecord | None:
    row = (await conn.execute(select(overrides_t).where(overrides_t.c.user_id == user_id))).first()
    if row is None:
        return None
    return OverrideRecord(
        user_id=row.user_id,
        tokens_per_window=row.tokens_per_window,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


async def put_override(conn: AsyncConnection, record: OverrideRecord) -> None:
    """Insert or replace the user's override."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {
        "user_id": record.user_id,
        "tokens_per_window": record.tokens_per_window,
        "updated_at": record.updated_at,
        "updated_by": record.updated_by,
    }
    stmt = dialect.insert(overrides_t).values(**values)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[overrides_t.c.user_id],
            set_={k: v for k, v in values.items() if k != "user_id"},
        )
    )


async def delete_override(conn: AsyncConnection, user_id: str) -> bool:
    """Remove the user's override; whether there was one."""
    result = await conn.execute(delete(overrides_t).where(overrides_t.c.user_id == user_id))
    return result.rowcount > 0
