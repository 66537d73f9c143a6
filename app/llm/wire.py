"""Wire plumbing shared by the HTTP providers: POST JSON, read SSE, map failures.

Every transport failure, malformed or oversized answer and non-2xx status leaves this
module as a typed `ProviderError`, so the provider modules only translate shapes.
"""

from __future__ import annotations

import codecs
import functools
import math
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import orjson

from app.llm.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.llm.types import JsonObject, TokenUsage

_MAX_ERROR_TEXT = 500
MAX_ANSWER_BYTES = 8 * 2**20
"""The most of one answer (or of one streamed event) read, decompressed: a model's longest
answer is well under 1 MiB; more is a broken or hostile server, not read into memory."""
MAX_CONNECTIONS = 200
"""Model calls in flight at once per process; more wait for a connection (within the
call's timeout)."""
MAX_CALL_TOKENS = 100_000_000
"""More tokens than any model's window: a usage above it cannot be true."""
_WIRE_ERRORS = (aiohttp.ClientError, OSError)
"""What a broken connection, a timeout or a malformed HTTP answer (a bad status line, a
bad header, broken compression) raises; TimeoutError is an OSError."""


def as_object(value: object) -> JsonObject:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_objects(value: object) -> list[JsonObject]:
    """The JSON objects in `value` if it is a list, else none."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def as_str(value: object) -> str | None:
    """`value` if it is a string."""
    return value if isinstance(value, str) else None


def as_int(value: object) -> int:
    """`value` if it is an integer (JSON null and absent count as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_arguments(text: str) -> tuple[JsonObject, str | None]:
    """Tool arguments from the model's JSON text: `(arguments, raw text if not an object)`."""
    # Some OpenAI-compatible servers send "" for a tool without parameters.
    if not text.strip():
        return {}, None
    try:
        value: object = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}, text
    if isinstance(value, dict):
        return value, None
    return {}, text


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where one provider's calls go and how: its URL, headers, timeout and name."""

    url: str
    headers: Mapping[str, str]
    timeout_s: float
    """Bounds the connection and each wait for bytes (the retry layer bounds the attempt)."""
    provider: str
    """Named in errors."""


class ModelHttp:
    """The one HTTP client of this process's model calls: pooled keep-alive connections
    over aiohttp, shared by every provider and run. It keeps no cookies (a cookie one run's
    answer set must never go out with another user's call) and follows no redirects.

    aiohttp directly, not httpx over it: httpx's request and response models cost
    160 µs of CPU per call on top of aiohttp's 60 (BENCHMARKS.md, 2026-11-29)."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # HTTP(S)_PROXY and NO_PROXY apply, as they did with httpx, read once per endpoint
        # (aiohttp's trust_env reads them, and ~/.netrc, in a thread on every call: +210 µs).
        self._proxy_of: dict[str, str | None] = {}

    async def aclose(self) -> None:
        await self._session.close()

    async def post_json(self, to: Endpoint, body: JsonObject) -> JsonObject:
        """POST `body` and return the JSON object answered, or raise a `ProviderError`."""
        provider = to.provider
        try:
            async with self._post(to, body) as response:
                content = await _read_capped(response, provider)
        except _WIRE_ERRORS as exc:
            raise _transport_error(exc, provider) from exc
        _check_status(response, content, provider)
        try:
            value: object = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ProviderServerError(
                f"{provider} answered malformed JSON", provider=provider, status_code=200
            ) from exc
        if not isinstance(value, dict):
            raise ProviderServerError(
                f"{provider} answered JSON that is not an object",
                provider=provider,
                status_code=200,
            )
        return value

    async def stream_events(
        self, to: Endpoint, body: JsonObject
    ) -> AsyncGenerator[JsonObject, None]:
        """POST `body` and yield the JSON object of each SSE `data:` line until `[DONE]`.
        The retry layer bounds the whole attempt (`AGENTSVC_LLM_TIMEOUT_S`), streamed or
        not. Use with `contextlib.aclosing`."""
        provider = to.provider
        try:
            async with self._post(to, body) as response:
                if response.status >= 300:
                    _check_status(response, await _read_capped(response, provider), provider)
                async for line in _lines(response, provider):
                    if not line.startswith("data:"):
                        continue  # `event:` names repeat the payload's `type`; comments are pings
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    yield _parse_event(data, provider)
        except _WIRE_ERRORS as exc:
            raise _transport_error(exc, provider) from exc

    def _post(
        self, to: Endpoint, body: JsonObject
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self._session.post(
            to.url,
            data=orjson.dumps(body),
            headers=to.headers,
            timeout=_timeout(to.timeout_s),
            allow_redirects=False,
            # Credentials in the proxy's URL go to the proxy alone (Proxy-Authorization).
            proxy=self._proxy(to.url),
        )

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for `url`, if any."""
        if url not in self._proxy_of:
            parts = urllib.parse.urlsplit(url)
            proxy = urllib.request.getproxies().get(parts.scheme)
            bypass = proxy is not None and urllib.request.proxy_bypass(parts.hostname or "")
            self._proxy_of[url] = None if bypass else proxy
        return self._proxy_of[url]


@functools.lru_cache(maxsize=16)
def _timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
    )


async def _read_capped(response: aiohttp.ClientResponse, provider: str) -> bytes:
    """The answer's body, decompressed, if it is at most `MAX_ANSWER_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _oversized(provider)
        chunks.append(chunk)
    return b"".join(chunks)


async def _lines(response: aiohttp.ClientResponse, provider: str) -> AsyncGenerator[str, None]:
    """The streamed answer's lines (UTF-8), each at most `MAX_ANSWER_BYTES` (characters)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[str] = []
    size = 0
    async for chunk in response.content.iter_any():
        *ended, rest = decoder.decode(chunk).split("\n")
        for piece in ended:
            pending.append(piece)
            yield "".join(pending).rstrip("\r")
            pending.clear()
            size = 0
        size += len(rest)
        if size > MAX_ANSWER_BYTES:
            raise _oversized(provider)
        if rest:
            pending.append(rest)
    pending.append(decoder.decode(b"", final=True))
    if any(pending):
        yield "".join(pending).rstrip("\r")


def _oversized(provider: str) -> ProviderError:
    return ProviderServerError(
        f"{provider} answered more than {MAX_ANSWER_BYTES // 2**20} MiB; not read further",
        provider=provider,
        status_code=200,
    )


def plausible(usage: TokenUsage, provider: str) -> TokenUsage:
    """`usage` as the provider reported it, if it can be true: no count negative or beyond
    `MAX_CALL_TOKENS`, cache reads and writes within the input. Else the answer is malformed
    (it would be billed to the user)."""
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )
    if (
        any(not 0 <= n <= MAX_CALL_TOKENS for n in counts)
        or usage.cached_tokens + usage.cache_write_tokens > usage.input_tokens
    ):
        raise ProviderServerError(
            f"{provider} reported impossible token usage: {usage.model_dump()}",
            provider=provider,
            status_code=200,
        )
    return usage


def _parse_event(data: str, provider: str) -> JsonObject:
    try:
        event: object = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderServerError(f"{provider} streamed malformed JSON", provider=provider) from exc
    if not isinstance(event, dict):
        raise ProviderServerError(f"{provider} streamed a non-object event", provider=provider)
    # A failure after the 200 header arrives in-band (e.g. Anthropic `overloaded_error`).
    if "error" in event:
        message = _error_message_from(event) or "stream error"
        raise ProviderServerError(f"{provider} stream failed: {message}", provider=provider)
    return event


def _transport_error(exc: Exception, provider: str) -> ProviderError:
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(f"{provider} did not answer in time: {exc!r}", provider=provider)
    return ProviderUnavailable(f"{provider} unreachable: {exc!r}", provider=provider)


def _check_status(response: aiohttp.ClientResponse, content: bytes, provider: str) -> None:
    """Raise the typed error of a non-2xx answer whose body is `content`."""
    status = response.status
    if status < 300:
        return
    if status < 400:
        # Redirects are not followed (the client is shared): a base URL to correct.
        where = response.headers.get("location", "nowhere")
        raise ProviderBadRequest(
            f"{provider} answered {status}, a redirect to {where[:200]}, which is not followed;"
            " check the provider's base URL",
            provider=provider,
            status_code=status,
        )
    detail = _error_message(response, content)
    message = f"{provider} answered {status}: {detail}"
    if status == 429:
        raise ProviderRateLimited(
            message,
            provider=provider,
            status_code=status,
            retry_after_s=retry_after_s(response.headers),
        )
    if status in (401, 403):
        raise ProviderAuthError(message, provider=provider, status_code=status)
    if status >= 500:
        raise ProviderServerError(message, provider=provider, status_code=status)
    raise ProviderBadRequest(message, provider=provider, status_code=status)


def _error_message(response: aiohttp.ClientResponse, content: bytes) -> str:
    text = content[: _MAX_ERROR_TEXT * 4].decode(errors="replace")[:_MAX_ERROR_TEXT]
    try:
        body: object = orjson.loads(content)
    except orjson.JSONDecodeError:
        return text or response.reason or ""
    return _error_message_from(as_object(body)) or text


def _error_message_from(body: JsonObject) -> str | None:
    error = body.get("error")
    if isinstance(error, str):
        return error
    return as_str(as_object(error).get("message"))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _non_negative_float(millis)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means no zone was given
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _non_negative_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
