"""`http_get`: fetch a URL from a host the operator allowlisted.

The host must match an allowlist entry exactly (case aside); redirects are
reported, not followed, because following one could leave the allowlist; the
body is streamed and cut at 64 KiB so a large answer cannot fill memory.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict, Field

from app.tools.base import Risk, Tool, ToolContext, ToolFailure, ToolUnavailable

MAX_URL_CHARS = 2048
MAX_BODY_BYTES = 64 * 1024
TIMEOUT_S = 10.0
_SCHEMES = frozenset({"http", "https"})


class HttpGetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="Absolute http:// or https:// URL on a host the operator allows.",
    )


def parse_allowed_url(raw: str, allowed_hosts: frozenset[str]) -> httpx.URL:
    """The URL, if it is http(s), carries no credentials and names an allowed host."""
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise ToolFailure(f"invalid URL: {exc}") from None
    if url.scheme not in _SCHEMES:
        raise ToolFailure(f"only http and https URLs are allowed, got {url.scheme or 'none'!r}")
    if url.userinfo:
        raise ToolFailure("URLs with credentials (user:password@host) are not allowed")
    host = url.host.lower()
    if not host:
        raise ToolFailure("URL has no host")
    if host not in {allowed.lower() for allowed in allowed_hosts}:
        raise ToolFailure(f"host {host} is not on the operator's allowlist")
    return url


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """Up to `MAX_BODY_BYTES` of the body, and whether there was more."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return bytes(body[:MAX_BODY_BYTES]), True
    return bytes(body), False


def _describe_redirect(url: httpx.URL, status: int, location: str) -> str:
    try:
        target = str(url.join(location))
    except httpx.InvalidURL:
        target = location
    return (
        f"HTTP {status}\nredirect to {target} (not followed; call http_get with that URL"
        " if you need it)"
    )


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return body.decode("utf-8", errors="replace")


async def http_get(args: BaseModel, ctx: ToolContext) -> str:
    """`HTTP <status>` and the body text, or where a redirect points."""
    if not isinstance(args, HttpGetArgs):
        raise TypeError(f"http_get got {type(args).__name__}, not HttpGetArgs")
    url = parse_allowed_url(args.url, ctx.http_allowed_hosts)
    try:
        async with ctx.http.stream(
            "GET", url, follow_redirects=False, timeout=TIMEOUT_S
        ) as response:
            status = response.status_code
            if response.is_redirect:
                return _describe_redirect(url, status, response.headers["location"])
            body, truncated = await _read_capped(response)
            charset = response.charset_encoding
    except httpx.TimeoutException:
        raise ToolUnavailable(f"timed out after {TIMEOUT_S:g}s fetching {url}") from None
    except httpx.HTTPError as exc:
        raise ToolUnavailable(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
    text = _decode(body, charset)
    if truncated:
        text += f"\n[truncated: showing the first {MAX_BODY_BYTES} bytes of the body]"
    return f"HTTP {status}\n{text}"


HTTP_GET = Tool(
    name="http_get",
    description=(
        "Fetch a web page or API response with an HTTP GET. Only hosts the operator allows"
        " can be fetched; redirects are reported, not followed; bodies over 64 KiB are cut"
        " off. Returns 'HTTP <status>' on the first line, then the body as text."
    ),
    args_model=HttpGetArgs,
    fn=http_get,
    risk=Risk.MEDIUM,
    idempotent=True,
    read_only=True,
    timeout_s=TIMEOUT_S,
    # Room for the whole 64 KiB and the truncation note, so the note is what the model sees.
    max_result_chars=MAX_BODY_BYTES + 200,
)
