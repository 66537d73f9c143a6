"""Users and their API keys (only a keyed hash of each key is stored)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import ApiKey, User

users_t = cast(Table, User.__table__)
keys_t = cast(Table, ApiKey.__table__)


async def ensure_user(conn: AsyncConnection, user_id: str) -> None:
    """Create the user unless it exists."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(users_t).values(id=user_id).on_conflict_do_nothing())


async def insert_key(conn: AsyncConnection, *, user_id: str, key_hash: str, role: str) -> None:
    await ensure_user(conn, user_id)
    await conn.execute(keys_t.insert().values(user_id=user_id, key_hash=key_hash, role=role))


async def find_key(conn: AsyncConnection, key_hash: str) -> tuple[str, str] | None:
    """(user_id, role) of a live key with this hash."""
    row = (
        await conn.execute(
            select(keys_t.c.user_id, keys_t.c.role).where(
                keys_t.c.key_hash == key_hash, keys_t.c.revoked_at.is_(None)
            )
        )
    ).first()
    return None if row is None else (row.user_id, row.role)
