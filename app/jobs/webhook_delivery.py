"""Webhook delivery pieces: Standard Webhooks signing, the body, one attempt, the retry schedule.

Pure apart from `send_webhook`, which makes exactly one HTTP request. The
worker that owns the deliveries table decides when to call it: it keeps the
same `msg_id` on every retry (receivers deduplicate on it) and asks
`RetrySchedule.next_delay` when to try again.

Signatures follow https://www.standardwebhooks.com: the secret is
`whsec_<base64 key>` and `webhook-signature` is `v1,<base64 HMAC-SHA256>` over
`{msg_id}.{timestamp}.{body}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from app.jobs.ssrf import UnsafeURL

USER_AGENT = "agentsvc-webhooks/1"
SECRET_PREFIX = "whsec_"
MAX_ERROR_BODY_BYTES = 512
"""How much of a failed response's body goes into the error message; the rest is not read."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (prefix optional, padding optional).

    Raises `ValueError` for a secret that is not base64 or is empty; call it when
    settings load so a bad secret fails at startup, not at the first delivery.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("webhook secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt, plus content type and user agent."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def render_body(event_type: str, timestamp: datetime, data: Mapping[str, object]) -> bytes:
    """`{"type", "timestamp", "data"}` as compact JSON, the timestamp in ISO 8601 UTC (`Z`).

    `timestamp` must be timezone-aware (`ValueError` otherwise). `data` should be
    JSON-ready, e.g. `model_dump(mode="json")`; types orjson cannot encode raise
    `TypeError`.
    """
    if timestamp.tzinfo is None:
        raise ValueError("webhook timestamp must be timezone-aware")
    envelope = {"type": event_type, "timestamp": timestamp.astimezone(UTC), "data": dict(data)}
    return orjson.dumps(envelope, option=orjson.OPT_UTC_Z)


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt did."""

    ok: bool
    """The receiver answered 2xx."""
    status_code: int | None
    """The HTTP status, or None when no response arrived."""
    error: str | None
    """Why the attempt failed, for operators and the run's `webhook` field; None when ok."""
    retry_after_s: float | None
    """The receiver's Retry-After in seconds (never negative), when it sent one."""
    gone: bool
    """410 Gone: the receiver asked us to stop; do not retry."""


async def send_webhook(
    client: httpx.AsyncClient,
    *,
    url: str,
    msg_id: str,
    body: bytes,
    secret: str,
    timeout_s: float = 10.0,
    now: Callable[[], float] = time.time,
) -> AttemptResult:
    """POST `body` to `url` once, signed, and report the outcome without raising for it.

    2xx is success; 3xx is a failure (redirects are not followed); 410 is
    `gone`; every other status, a timeout (`timeout_s` bounds the whole
    attempt), a transport error or an `UnsafeURL` from a `GuardedTransport` is
    a failure with a message. At most `MAX_ERROR_BODY_BYTES` of the response
    body are read. Raises only `ValueError` for a malformed `secret`.
    """
    headers = webhook_headers(secret, msg_id, math.floor(now()), body)
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                timeout=timeout_s,
                follow_redirects=False,
            ) as response:
                return await _result_of(response, now=now)
    except (TimeoutError, httpx.TimeoutException):
        return _failure(f"timed out after {timeout_s:g} s")
    except UnsafeURL as exc:
        return _failure(f"refused: {exc}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _failure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


async def _result_of(response: httpx.Response, *, now: Callable[[], float]) -> AttemptResult:
    status = response.status_code
    if 200 <= status < 300:
        return AttemptResult(
            ok=True, status_code=status, error=None, retry_after_s=None, gone=False
        )
    if status == 410:
        return AttemptResult(
            ok=False, status_code=status, error="HTTP 410: gone", retry_after_s=None, gone=True
        )
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        error = f"HTTP {status}: redirects are not followed (location: {location or 'none'})"
    else:
        snippet = await _read_prefix(response)
        error = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    return AttemptResult(
        ok=False,
        status_code=status,
        error=error,
        retry_after_s=parse_retry_after(response.headers.get("retry-after"), now=now()),
        gone=False,
    )


async def _read_prefix(response: httpx.Response) -> str:
    """The start of the body as text; the rest stays unread (the stream is then closed)."""
    prefix = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            prefix += chunk
            if len(prefix) >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.DecodingError:  # a broken gzip body must not hide the status
        return "(undecodable body)"
    return prefix[:MAX_ERROR_BODY_BYTES].decode("utf-8", errors="replace").strip()


def _failure(error: str) -> AttemptResult:
    return AttemptResult(ok=False, status_code=None, error=error, retry_after_s=None, gone=False)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), at least 0;
    None when absent or unreadable. `now` is the current Unix time, for dates."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means "-0000"
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


STANDARD_DELAYS_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Standard Webhooks' schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""


@dataclass(frozen=True, kw_only=True)
class RetrySchedule:
    """When to retry a failed delivery; one attempt plus one retry per entry of `delays_s`."""

    delays_s: tuple[float, ...] = STANDARD_DELAYS_S
    """Delay before retry n (after attempt n), in seconds."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter] so that
    deliveries failed together do not retry together."""
    max_retry_after_s: float = 86400.0
    """A receiver's Retry-After beyond this is capped, so one header cannot park a delivery."""

    def __post_init__(self) -> None:
        if not self.delays_s:
            raise ValueError("retry schedule needs at least one delay")
        if any(not math.isfinite(d) or d < 0 for d in self.delays_s):
            raise ValueError("retry delays must be finite and not negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if not (math.isfinite(self.max_retry_after_s) and self.max_retry_after_s >= 0):
            raise ValueError("max_retry_after_s must be finite and not negative")

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        """A schedule from a setting like `"5,300,1800,7200"` (seconds, comma-separated)."""
        parts = [part.strip() for part in text.split(",")]
        try:
            delays = tuple(float(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"retry delays must be comma-separated seconds, got {text!r}"
            ) from None
        return cls(delays_s=delays)

    def next_delay(
        self, attempts_done: int, *, retry_after_s: float | None, rng: random.Random
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when attempts are exhausted.

        `attempts_done` counts attempts made so far (1 after the first). The delay
        is the schedule's, jittered, and at least the receiver's Retry-After
        (capped at `max_retry_after_s`).
        """
        if attempts_done < 1:
            raise ValueError("attempts_done counts attempts already made, so it starts at 1")
        if attempts_done > len(self.delays_s):
            return None
        delay = self.delays_s[attempts_done - 1] * rng.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(max(retry_after_s, 0.0), self.max_retry_after_s))
        return delay
