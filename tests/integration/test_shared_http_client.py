"""The HTTP clients every run shares (the tools' and the model calls') keep no cookies: what a
site or a model server set in one run's answer never goes out with another run's request. Model
calls take the proxy of HTTP(S)_PROXY, as every client of the service did before."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.lifespan import shared_http_client
from app.llm.wire import Endpoint, ModelHttp
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


async def test_a_cookie_a_model_server_set_is_not_sent_with_the_next_call() -> None:
    seen: list[str | None] = []

    async def complete(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "alice-secret")
        return response

    app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])])
    http = ModelHttp()
    try:
        async with serve_app(app) as base_url:
            # By name: a default cookie jar would refuse cookies from an IP address anyway.
            url = base_url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"
            for _ in range(2):
                answer = await http.post_json(
                    Endpoint(url=url, headers={}, timeout_s=5, provider="openai"), {}
                )
                assert answer == {"ok": True}
    finally:
        await http.aclose()
    assert seen == [None, None]


Seen = list[tuple[str, bytes | None, bytes | None]]


def answering_ok(seen: Seen) -> ASGIApp:
    """A server (a proxy or a model) that notes each request's target, Host and
    Proxy-Authorization and answers `{"ok": true}`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        seen.append((scope["path"], headers.get(b"host"), headers.get(b"proxy-authorization")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_model_calls_go_through_the_proxy_the_environment_names(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    seen: Seen = []
    async with serve_app(answering_ok(seen)) as proxy_url:
        no_proxy_settings.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://me:secret@"))
        http = ModelHttp()
        try:
            to = Endpoint(
                url="http://models.example/v1/chat/completions",
                headers={},
                timeout_s=5,
                provider="openai",
            )
            answer = await http.post_json(to, {})
        finally:
            await http.aclose()
    assert answer == {"ok": True}
    # The proxy's credentials (from its URL) go to the proxy alone, as Basic auth.
    assert seen == [
        ("http://models.example/v1/chat/completions", b"models.example", b"Basic bWU6c2VjcmV0")
    ]


async def test_a_host_no_proxy_names_is_called_directly(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    # A proxy nobody listens on: the call succeeds only if it goes around it.
    no_proxy_settings.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    no_proxy_settings.setenv("NO_PROXY", "127.0.0.1")
    seen: Seen = []
    async with serve_app(answering_ok(seen)) as base_url:
        http = ModelHttp()
        try:
            to = Endpoint(url=f"{base_url}/v1", headers={}, timeout_s=5, provider="openai")
            assert await http.post_json(to, {}) == {"ok": True}
        finally:
            await http.aclose()
    assert [path for path, _, _ in seen] == ["/v1"]


async def test_the_tools_client_goes_through_the_proxy_too(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    seen: Seen = []
    async with serve_app(answering_ok(seen)) as proxy_url:
        no_proxy_settings.setenv("HTTP_PROXY", proxy_url)
        async with shared_http_client(timeout_s=5) as http:
            response = await http.get("http://docs.example/page")
    assert response.json() == {"ok": True}
    assert [(path, host) for path, host, _ in seen] == [
        ("http://docs.example/page", b"docs.example")
    ]
