"""Stored API keys, managed by admins over HTTP (the console script does the same)."""

from __future__ import annotations

import uuid

from app.errors import NotFound
from app.services.auth import Authenticator, Principal
from app.settings import Role
from app.store import keys as key_store
from app.store.db import Database
from app.store.keys import KeyRecord

ADMINS_ONLY = "only admins manage API keys"


async def issue_key(
    auth: Authenticator, principal: Principal, *, user_id: str, role: Role
) -> tuple[str, KeyRecord]:
    """A new key for `user_id`: the key, shown this once, and its record."""
    principal.require_admin(ADMINS_ONLY)
    return await auth.issue_key(user_id=user_id, role=role)


async def list_keys(db: Database, principal: Principal, *, user_id: str | None) -> list[KeyRecord]:
    principal.require_admin(ADMINS_ONLY)
    async with db.read() as conn:
        return await key_store.list_keys(conn, user_id=user_id)


async def revoke_key(auth: Authenticator, principal: Principal, key_id: uuid.UUID) -> KeyRecord:
    """Revoke the key (again: unchanged); 404 when no stored key has that id."""
    principal.require_admin(ADMINS_ONLY)
    record = await auth.revoke_key(str(key_id))
    if record is None:
        raise NotFound(f"API key {key_id} not found")
    return record
