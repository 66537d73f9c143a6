from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.tools.base import ToolContext, ToolFailure
from app.tools.http import HTTP_GET, MAX_BODY_BYTES

Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """A MockTransport that records every request it sees."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = lambda request: httpx.Response(200, text="hello")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
async def ctx(server: Server, tmp_path: Path) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        yield ToolContext(
            sandbox_dir=tmp_path,
            http=client,
            http_allowed_hosts=frozenset({"api.example.com", "Docs.Example.org"}),
        )


async def http_get(ctx: ToolContext, url: str) -> str:
    return await HTTP_GET.fn(HTTP_GET.args_model.model_validate({"url": url}), ctx)


async def test_allowed_host_is_fetched(ctx: ToolContext, server: Server) -> None:
    assert await http_get(ctx, "https://api.example.com/v1/items?q=1") == "HTTP 200\nhello"
    [request] = server.requests
    assert request.method == "GET"
    assert str(request.url) == "https://api.example.com/v1/items?q=1"


async def test_host_match_ignores_case(ctx: ToolContext, server: Server) -> None:
    assert await http_get(ctx, "http://API.Example.com/") == "HTTP 200\nhello"
    assert await http_get(ctx, "http://docs.example.org/") == "HTTP 200\nhello"
    assert len(server.requests) == 2


async def test_error_statuses_are_reported_not_raised(ctx: ToolContext, server: Server) -> None:
    server.handler = lambda request: httpx.Response(404, text="not here")
    assert await http_get(ctx, "https://api.example.com/missing") == "HTTP 404\nnot here"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://evil.example.net/", "evil.example.net"),
        ("https://example.com/", "example.com"),
        ("https://sub.api.example.com/", "sub.api.example.com"),
        ("https://api.example.com.evil.net/", "api.example.com.evil.net"),
        ("http://127.0.0.1/", "127.0.0.1"),
    ],
)
async def test_other_hosts_are_refused_without_a_request(
    url: str, host: str, ctx: ToolContext, server: Server
) -> None:
    with pytest.raises(ToolFailure, match=f"host {host} is not on the operator's allowlist"):
        await http_get(ctx, url)
    assert server.requests == []


async def test_an_empty_allowlist_allows_nothing(server: Server, tmp_path: Path) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        ctx = ToolContext(sandbox_dir=tmp_path, http=client)
        with pytest.raises(ToolFailure, match="not on the operator's allowlist"):
            await http_get(ctx, "https://api.example.com/")
    assert server.requests == []


@pytest.mark.parametrize(
    "url", ["https://user:pw@api.example.com/", "https://user@api.example.com/"]
)
async def test_credentials_in_urls_are_refused(url: str, ctx: ToolContext, server: Server) -> None:
    with pytest.raises(ToolFailure, match="credentials"):
        await http_get(ctx, url)
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    ["ftp://api.example.com/file", "file:///etc/passwd", "api.example.com/x", "//api.example.com/"],
)
async def test_other_schemes_are_refused(url: str, ctx: ToolContext, server: Server) -> None:
    with pytest.raises(ToolFailure, match="only http and https"):
        await http_get(ctx, url)
    assert server.requests == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_reported_not_followed(
    status: int, ctx: ToolContext, server: Server
) -> None:
    server.handler = lambda request: httpx.Response(
        status, headers={"Location": "/elsewhere"}, text="moved"
    )
    result = await http_get(ctx, "https://api.example.com/old")
    assert result.startswith(f"HTTP {status}\nredirect to https://api.example.com/elsewhere")
    assert "not followed" in result
    assert len(server.requests) == 1


async def test_body_is_truncated_at_64_kib(ctx: ToolContext, server: Server) -> None:
    body = b"a" * MAX_BODY_BYTES + b"b" * 1000
    server.handler = lambda request: httpx.Response(200, content=body)
    result = await http_get(ctx, "https://api.example.com/big")
    head, text, note = result.split("\n")
    assert head == "HTTP 200"
    assert text == "a" * MAX_BODY_BYTES
    assert note == f"[truncated: showing the first {MAX_BODY_BYTES} bytes of the body]"


async def test_body_is_streamed_not_read_whole(ctx: ToolContext, server: Server) -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        while True:
            chunks_sent += 1
            yield b"x" * 4096

    server.handler = lambda request: httpx.Response(200, content=endless())
    result = await http_get(ctx, "https://api.example.com/stream")
    assert result.endswith("bytes of the body]")
    assert chunks_sent <= MAX_BODY_BYTES // 4096 + 2


async def test_charset_is_honoured(ctx: ToolContext, server: Server) -> None:
    server.handler = lambda request: httpx.Response(
        200,
        content="café".encode("latin-1"),
        headers={"Content-Type": "text/plain; charset=latin-1"},
    )
    assert await http_get(ctx, "https://api.example.com/") == "HTTP 200\ncafé"


async def test_unknown_charset_falls_back_to_utf8(ctx: ToolContext, server: Server) -> None:
    server.handler = lambda request: httpx.Response(
        200, content="café".encode(), headers={"Content-Type": "text/plain; charset=klingon"}
    )
    assert await http_get(ctx, "https://api.example.com/") == "HTTP 200\ncafé"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ConnectTimeout, "timed out after 10s fetching https://api.example.com/"),
        (httpx.ReadTimeout, "timed out after 10s"),
        (httpx.ConnectError, "could not fetch https://api.example.com/: ConnectError"),
        (httpx.RemoteProtocolError, "could not fetch .*RemoteProtocolError"),
    ],
)
async def test_transport_errors_become_tool_failures(
    error: type[httpx.TransportError], message: str, ctx: ToolContext, server: Server
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    server.handler = fail
    with pytest.raises(ToolFailure, match=message):
        await http_get(ctx, "https://api.example.com/")


async def test_the_tool_timeout_is_passed_to_the_client(ctx: ToolContext, server: Server) -> None:
    await http_get(ctx, "https://api.example.com/")
    [request] = server.requests
    assert request.extensions["timeout"] == httpx.Timeout(HTTP_GET.timeout_s).as_dict()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValidationError, match="at most 2048 characters"):
        HTTP_GET.args_model.model_validate({"url": "https://api.example.com/" + "a" * 2048})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        HTTP_GET.args_model.model_validate({"url": "https://api.example.com/", "method": "POST"})


def test_declared_risk() -> None:
    assert HTTP_GET.name == "http_get"
    assert (HTTP_GET.risk, HTTP_GET.idempotent, HTTP_GET.read_only) == ("medium", True, True)
