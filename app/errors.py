"""Errors as types, and the one place that renders them as problem+json (RFC 9457).

AppError
├── InvalidRequest     422 validation_error
├── Unauthorized       401 unauthorized
├── Forbidden          403 forbidden
├── NotFound           404 not_found (also for another user's resource)
├── Conflict           409 conflict
├── PayloadTooLarge    413 payload_too_large
├── TooManyRequests    429 rate_limited (with Retry-After)
│   └── OverBudget     429 budget_exceeded (with Retry-After: the budget window's reset)
└── ServiceUnavailable 503 service_unavailable

A database that cannot be reached (a restart, a failover) answers 503 with Retry-After,
not 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.store.db import is_unavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """An error with an HTTP meaning. `detail` is shown to the client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class InvalidRequest(AppError):
    status = 422
    type = "validation_error"


class Unauthorized(AppError):
    status = 401
    type = "unauthorized"


class Forbidden(AppError):
    status = 403
    type = "forbidden"


class NotFound(AppError):
    status = 404
    type = "not_found"


class Conflict(AppError):
    status = 409
    type = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    type = "payload_too_large"


class TooManyRequests(AppError):
    status = 429
    type = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class OverBudget(TooManyRequests):
    type = "budget_exceeded"


class ServiceUnavailable(AppError):
    status = 503
    type = "service_unavailable"


RUN_START_ERRORS: tuple[type[AppError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
)
"""What starting a run can answer besides 429 (a named session that is someone else's,
missing, or still answering: 403, 404, 409)."""


def problem(
    status: int,
    type_: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, object] = {
        "type": type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, object]]:
    """`responses=` for a route: each error's status documented as problem+json."""
    out: dict[int | str, dict[str, object]] = {}
    for err in errors:
        out[err.status] = {
            "description": err.type,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return out


def _slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem(exc.status, exc.type, exc.detail, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return problem(422, "validation_error", detail or "invalid request", extra={"errors": errors})


def _message(error: Mapping[str, Any]) -> str:
    """An error's message; a JSON decoding error says what is wrong with the body."""
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and reason:
        return f"invalid JSON: {reason}"
    return str(error.get("msg", ""))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, _slug(exc.status_code), detail, headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_unavailable(exc):
        return await _unhandled(request, exc)
    log.warning("database unreachable: %s", exc)
    return problem(
        503,
        ServiceUnavailable.type,
        "the database cannot be reached just now; try again shortly",
        headers={"Retry-After": "1"},
    )


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return problem(500, "internal", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for database_error in (DBAPIError, asyncpg.InterfaceError, asyncpg.PostgresError):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unhandled)
