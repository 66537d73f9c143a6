"""Users and their API keys (only a keyed hash of each key is stored)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import ApiKey, User

users_t = cast(Table, User.__table__)
keys_t = cast(Table, ApiKey.__table__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key as operators see it: never the key, nor its hash."""

    id: uuid.UUID
    user_id: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


_SHOWN = (keys_t.c.id, keys_t.c.user_id, keys_t.c.role, keys_t.c.created_at, keys_t.c.revoked_at)


async def ensure_user(conn: AsyncConnection, user_id: str) -> None:
    """Create the user unless it exists."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(users_t).values(id=user_id).on_conflict_do_nothing())


async def insert_key(conn: AsyncConnection, *, user_id: str, key_hash: str, role: str) -> KeyRecord:
    await ensure_user(conn, user_id)
    row = (
        await conn.execute(
            keys_t.insert().values(user_id=user_id, key_hash=key_hash, role=role).returning(*_SHOWN)
        )
    ).one()
    return KeyRecord(*row)


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


async def list_keys(conn: AsyncConnection, *, user_id: str | None = None) -> list[KeyRecord]:
    """Stored keys, oldest first; only `user_id`'s when given."""
    stmt = select(*_SHOWN).order_by(keys_t.c.created_at, keys_t.c.id)
    if user_id is not None:
        stmt = stmt.where(keys_t.c.user_id == user_id)
    return [KeyRecord(*row) for row in await conn.execute(stmt)]


async def revoke_key(
    conn: AsyncConnection, *, now: datetime, key_id: uuid.UUID | None = None, key_hash: str = ""
) -> KeyRecord | None:
    """Revoke the key with this id or hash (a revoked one stays as it was); None if unknown."""
    match = keys_t.c.id == key_id if key_id is not None else keys_t.c.key_hash == key_hash
    await conn.execute(
        update(keys_t).where(match, keys_t.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    row = (await conn.execute(select(*_SHOWN).where(match))).first()
    return None if row is None else KeyRecord(*row)
