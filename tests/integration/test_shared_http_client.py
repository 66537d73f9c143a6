"""The HTTP client every run shares (model calls, the `http_get` tool) keeps no cookies: what
a site set in one run's answer never goes out with another run's request."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.lifespan import shared_http_client
from tests.fakes.loopback import serve_app


async def test_a_cookie_one_request_received_is_not_sent_with_the_next() -> None:
    seen: list[str | None] = []

    async def page(request: Request) -> PlainTextResponse:
        seen.append(request.headers.get("cookie"))
        response = PlainTextResponse("ok")
        response.set_cookie("session", "alice-secret")
        return response

    app = Starlette(routes=[Route("/", page)])
    async with serve_app(app) as base_url, shared_http_client(timeout_s=5) as http:
        for _ in range(2):
            response = await http.get(f"{base_url}/")
            assert response.headers["set-cookie"].startswith("session=alice-secret")
        assert len(http.cookies.jar) == 0
    assert seen == [None, None]
