"""Typed dependency aliases for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized
from app.lifespan import Services
from app.services.auth import Principal

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


async def get_services(request: Request) -> Services:
    # async: a plain def would send every request through the thread pool.
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>", headers=challenge)
    principal = await services.auth.authenticate(credentials.credentials)
    if principal is None:
        raise Unauthorized("invalid API key", headers=challenge)
    # Every authenticated request counts against its key's rate limit (429 beyond it).
    await services.rate_limit.check(principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_optional_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller when it sent a key (a wrong key is still 401); None when it sent none,
    for routes that also accept another proof (a stream token)."""
    if credentials is None or not credentials.credentials:
        return None
    return await get_principal(services, credentials)


OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Sent again with the same request, answers with the run it started the"
        " first time (`Idempotent-Replayed: true`) instead of starting another; with another"
        " request, 422.",
    ),
]
"""The optional `Idempotency-Key` header of the routes that start a run."""
