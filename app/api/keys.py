"""Stored API keys over HTTP (admins): issue, list, revoke."""

from __future__ import annotations

from datetime import datetime

from fastapi import status
from pydantic import BaseModel, ConfigDict, Field

from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import Forbidden, InvalidRequest, NotFound, Unauthorized, problem_responses
from app.services import keys
from app.services.runs import parse_id
from app.settings import Role
from app.store.keys import KeyRecord

router = api_router(tags=["admin"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=128)
    role: Role = "user"


class KeyRead(BaseModel):
    """A stored key: never the key itself (but once, when issued) nor its hash."""

    id: str
    user: str
    role: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: KeyRecord) -> KeyRead:
        return cls(
            id=str(record.id),
            user=record.user_id,
            role=record.role,
            created_at=record.created_at,
            revoked_at=record.revoked_at,
        )


class KeyIssued(KeyRead):
    key: str
    """Shown this once: only a keyed hash is stored."""


class KeyList(BaseModel):
    keys: list[KeyRead]


@router.post(
    "/agent/admin/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyIssued,
    responses=problem_responses(InvalidRequest, Unauthorized, Forbidden),
)
async def issue_key(body: KeyCreate, principal: PrincipalDep, services: ServicesDep) -> KeyIssued:
    """Issue a key for a user (admins); the answer is the only time the key is shown."""
    key, record = await keys.issue_key(services.auth, principal, user_id=body.user, role=body.role)
    return KeyIssued(**KeyRead.of(record).model_dump(), key=key)


@router.get(
    "/agent/admin/keys",
    response_model=KeyList,
    responses=problem_responses(Unauthorized, Forbidden),
)
async def list_keys(
    principal: PrincipalDep, services: ServicesDep, user: str | None = None
) -> KeyList:
    """Stored keys, oldest first, one user's with `user` (admins)."""
    records = await keys.list_keys(services.db, principal, user_id=user)
    return KeyList(keys=[KeyRead.of(r) for r in records])


@router.delete(
    "/agent/admin/keys/{key_id}",
    response_model=KeyRead,
    responses=problem_responses(Unauthorized, Forbidden, NotFound),
)
async def revoke_key(key_id: str, principal: PrincipalDep, services: ServicesDep) -> KeyRead:
    """Revoke a stored key (admins): every replica refuses it within 30 s."""
    record = await keys.revoke_key(services.auth, principal, parse_id(key_id, "API key"))
    return KeyRead.of(record)
