"""Signing (checked with the reference `standardwebhooks` verifier), the body, the retry
schedule, and `send_webhook` over MockTransport."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.jobs.ssrf import GuardedTransport
from app.jobs.webhook_delivery import (
    MAX_ERROR_BODY_BYTES,
    STANDARD_DELAYS_S,
    USER_AGENT,
    AttemptResult,
    RetrySchedule,
    decode_secret,
    parse_retry_after,
    render_body,
    send_webhook,
    sign,
    webhook_headers,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = b'{"type":"run.completed","timestamp":"2025-01-02T03:04:05Z","data":{"job_id":"r1"}}'


def test_signature_matches_the_specification_example() -> None:
    # The worked example published with the Standard Webhooks / Svix documentation.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_verify_with_the_reference_library() -> None:
    headers = webhook_headers(SECRET, "msg_1", int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "run.completed",
        "timestamp": "2025-01-02T03:04:05Z",
        "data": {"job_id": "r1"},
    }
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert headers["webhook-id"] == "msg_1"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"r1", b"r2")),
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
    ],
)
def test_tampering_fails_verification(
    tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]],
) -> None:
    headers, body = tamper(webhook_headers(SECRET, "msg_1", int(time.time()), BODY), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers)


def test_another_secret_fails_verification() -> None:
    headers = webhook_headers(SECRET, "msg_1", int(time.time()), BODY)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_secret_decodes_like_the_reference_library() -> None:
    unpadded = base64.b64encode(b"key-of-odd-len").decode().rstrip("=")
    assert decode_secret("whsec_" + unpadded) == b"key-of-odd-len"
    assert decode_secret(unpadded) == b"key-of-odd-len"  # the prefix is optional there too
    headers = webhook_headers(unpadded, "msg_1", int(time.time()), BODY)
    Webhook("whsec_" + unpadded).verify(BODY, headers)


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_not base64!"])
def test_bad_secret_is_a_value_error(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        decode_secret(secret)


def test_render_body_is_compact_json_with_utc_timestamp() -> None:
    plus_two = timezone(timedelta(hours=2))
    at = datetime(2025, 1, 2, 5, 4, 5, tzinfo=plus_two)
    assert render_body("run.completed", at, {"job_id": "r1"}) == BODY


def test_render_body_refuses_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_body("run.failed", datetime(2025, 1, 1), {})  # noqa: DTZ001


def test_schedule_defaults_follow_standard_webhooks() -> None:
    schedule = RetrySchedule()
    assert schedule.delays_s == (5, 300, 1800, 7200, 18000, 36000, 36000) == STANDARD_DELAYS_S
    assert (schedule.jitter, schedule.max_retry_after_s) == (0.2, 86400)


def test_jitter_stays_within_bounds() -> None:
    schedule, rng = RetrySchedule(), random.Random(7)
    for attempts_done, base in enumerate(STANDARD_DELAYS_S, start=1):
        delays = [
            schedule.next_delay(attempts_done, retry_after_s=None, rng=rng) for _ in range(200)
        ]
        values = [d for d in delays if d is not None]
        assert len(values) == 200
        assert all(base * 0.8 <= d <= base * 1.2 for d in values)
        assert max(values) - min(values) > base * 0.2  # really jittered, not constant


def test_no_jitter_gives_the_schedule_exactly() -> None:
    schedule = RetrySchedule(delays_s=(1, 2), jitter=0)
    rng = random.Random(1)
    assert [schedule.next_delay(n, retry_after_s=None, rng=rng) for n in (1, 2, 3)] == [1, 2, None]


def test_attempts_are_exhausted_after_the_last_delay() -> None:
    schedule, rng = RetrySchedule(), random.Random(1)
    assert schedule.next_delay(7, retry_after_s=None, rng=rng) is not None
    assert schedule.next_delay(8, retry_after_s=None, rng=rng) is None
    assert schedule.next_delay(8, retry_after_s=10, rng=rng) is None
    with pytest.raises(ValueError, match="starts at 1"):
        schedule.next_delay(0, retry_after_s=None, rng=rng)


def test_retry_after_is_a_floor_capped_at_the_maximum() -> None:
    schedule = RetrySchedule(delays_s=(5, 300), jitter=0, max_retry_after_s=600)
    rng = random.Random(1)
    assert schedule.next_delay(1, retry_after_s=120, rng=rng) == 120
    assert schedule.next_delay(2, retry_after_s=120, rng=rng) == 300
    assert schedule.next_delay(1, retry_after_s=10**9, rng=rng) == 600
    assert schedule.next_delay(1, retry_after_s=-5, rng=rng) == 5


def test_parse_schedule() -> None:
    schedule = RetrySchedule.parse(" 5, 300 ,1800,7200.5")
    assert schedule == RetrySchedule(delays_s=(5, 300, 1800, 7200.5))


@pytest.mark.parametrize("text", ["", "5,,300", "five", "5;300", "-1", "nan", "inf", "5,1e999"])
def test_parse_schedule_rejects_bad_settings(text: str) -> None:
    with pytest.raises(ValueError, match="retry"):
        RetrySchedule.parse(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetrySchedule(jitter=1.0),
        lambda: RetrySchedule(jitter=-0.1),
        lambda: RetrySchedule(max_retry_after_s=-1),
        lambda: RetrySchedule(delays_s=()),
    ],
)
def test_schedule_validates_its_fields(build: Callable[[], RetrySchedule]) -> None:
    with pytest.raises(ValueError, match="retry|jitter|max_retry_after_s"):
        build()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 2026 00:02:00 GMT", 120.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        ("１２", None),  # non-ASCII digits are not delay-seconds
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == expected


Handler = Callable[[httpx.Request], httpx.Response]


async def send(handler: Handler, url: str = "https://hooks.example.com/h") -> AttemptResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await send_webhook(client, url=url, msg_id="msg_1", body=BODY, secret=SECRET)


async def test_send_signs_with_the_injected_clock() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        result = await send_webhook(
            client, url="https://h.example/", msg_id="m", body=BODY, secret=SECRET, now=lambda: 12.9
        )
    assert result == AttemptResult(
        ok=True, status_code=202, error=None, retry_after_s=None, gone=False
    )
    assert seen[0].headers["webhook-timestamp"] == "12"
    assert seen[0].headers["webhook-signature"] == sign(SECRET, "m", 12, BODY)


async def test_send_reports_only_the_start_of_a_large_error_body() -> None:
    result = await send(lambda r: httpx.Response(500, content=b"x" * 1_000_000))
    assert result.error == "HTTP 500: " + "x" * MAX_ERROR_BODY_BYTES


async def test_send_reports_transport_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    assert (await send(refuse)).error == "ConnectError: All connection attempts failed"


async def test_send_reports_invalid_url() -> None:
    result = await send(lambda r: httpx.Response(200), url="http://[::1/")
    assert result.error == "InvalidURL: Invalid port: ':1'"


async def test_send_reports_a_refused_url() -> None:
    async def private(host: str, port: int) -> list[str]:
        return ["10.0.0.1"]

    transport = GuardedTransport(
        httpx.MockTransport(lambda r: httpx.Response(200)), resolve=private
    )
    async with httpx.AsyncClient(transport=transport) as client:
        result = await send_webhook(
            client, url="https://hooks.example.com/", msg_id="m", body=BODY, secret=SECRET
        )
    assert result == AttemptResult(
        ok=False,
        status_code=None,
        error="refused: hooks.example.com resolves to 10.0.0.1 (private);"
        " only public addresses are allowed",
        retry_after_s=None,
        gone=False,
    )
