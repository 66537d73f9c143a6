"""What a request may carry, checked before any route sees it.

JSON bodies are parsed by orjson: no NaN or Infinity, no number beyond a double, nesting at
most 1,024 deep, valid UTF-8 without lone surrogates. No string may hold a NUL character
(`\\u0000`), in a body, a path or a query string: PostgreSQL's text and JSONB cannot store one,
and no agent input needs it. Each refusal is a 422 `validation_error` naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import problem

NUL_REFUSED = "NUL characters (\\u0000) are not accepted"


def holds_nul(value: object) -> bool:
    """Whether a parsed JSON value has a NUL character in any string or key."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = orjson.loads(body)  # its JSONDecodeError is FastAPI's 422 json_invalid
            # A NUL can only come from a \u0000 escape: the walk is for bodies that have one.
            if b"\\u0000" in body and holds_nul(value):
                raise json.JSONDecodeError(NUL_REFUSED, body.decode(errors="replace"), 0)
            self._json = value
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is parsed by `StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def api_router(*, tags: list[str | Enum] | None = None) -> APIRouter:
    """The router every API module declares its routes on."""
    return APIRouter(tags=tags, route_class=StrictJSONRoute)


class RejectNulInURL:
    """Answer 422 to a path or query string with a NUL character (`%00`) in it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            answer = problem(422, "validation_error", f"{NUL_REFUSED} in the URL")
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
