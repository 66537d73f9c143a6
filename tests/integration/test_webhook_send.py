"""`send_webhook` through `GuardedTransport` against a real receiver on loopback
(`tests.fakes.webhook_receiver`: records every request, answers from a script)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from app.jobs.ssrf import GuardedTransport
from app.jobs.webhook_delivery import AttemptResult, send_webhook
from tests.fakes.webhook_receiver import Answer, Receiver, serve_receiver

SECRET = "whsec_" + base64.b64encode(b"integration-test-secret-32-bytes").decode()
BODY = b'{"type":"run.completed","timestamp":"2025-01-02T03:04:05Z","data":{"job_id":"r1"}}'


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as receiver:
        yield receiver


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = GuardedTransport(allowed_hosts={"127.0.0.1", "localhost"})
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


async def deliver(client: httpx.AsyncClient, url: str, *, timeout_s: float = 5.0) -> AttemptResult:
    return await send_webhook(
        client, url=url, msg_id="msg_42", body=BODY, secret=SECRET, timeout_s=timeout_s
    )


async def test_2xx_is_ok_and_verifies(receiver: Receiver, client: httpx.AsyncClient) -> None:
    result = await deliver(client, receiver.url)
    assert result == AttemptResult(
        ok=True, status_code=200, error=None, retry_after_s=None, gone=False
    )
    [request] = receiver.received
    assert request.body == BODY
    assert Webhook(SECRET).verify(request.body, request.headers)["data"] == {"job_id": "r1"}
    assert request.headers["webhook-id"] == "msg_42"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["user-agent"] == "agentsvc-webhooks/1"


async def test_host_header_keeps_the_name_while_the_ip_is_dialled(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    result = await deliver(client, f"http://localhost:{receiver.port}/hooks")
    assert result.ok
    assert receiver.received[0].headers["host"] == f"localhost:{receiver.port}"


async def test_500_with_retry_after_is_a_failure(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.answers.append(Answer(status=500, headers={"retry-after": "120"}))
    result = await deliver(client, receiver.url)
    assert result == AttemptResult(
        ok=False,
        status_code=500,
        error="HTTP 500: receiver says no",
        retry_after_s=120.0,
        gone=False,
    )


async def test_redirect_is_not_followed(receiver: Receiver, client: httpx.AsyncClient) -> None:
    elsewhere = f"http://127.0.0.1:{receiver.port}/elsewhere"
    receiver.answers.append(Answer(status=302, headers={"location": elsewhere}))
    result = await deliver(client, receiver.url)
    assert not result.ok
    assert result.status_code == 302
    assert result.error == f"HTTP 302: redirects are not followed (location: {elsewhere})"
    assert [r.path for r in receiver.received] == ["/hooks"]


async def test_410_means_gone(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.answers.append(Answer(status=410))
    result = await deliver(client, receiver.url)
    assert result.gone
    assert not result.ok
    assert result.status_code == 410


async def test_slow_receiver_times_out(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.answers.append(Answer(delay_s=30))
    started = time.monotonic()
    result = await deliver(client, receiver.url, timeout_s=0.2)
    assert time.monotonic() - started < 2
    assert result == AttemptResult(
        ok=False, status_code=None, error="timed out after 0.2 s", retry_after_s=None, gone=False
    )


async def test_loopback_is_refused_without_the_allowlist(receiver: Receiver) -> None:
    async with httpx.AsyncClient(transport=GuardedTransport()) as client:
        result = await deliver(client, receiver.url)
    assert not result.ok
    assert result.status_code is None
    assert result.error == (
        "refused: 127.0.0.1 resolves to 127.0.0.1 (loopback); only public addresses are allowed"
    )
    assert receiver.received == []


async def test_a_proxy_in_the_environment_is_never_taken(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dialled at the checked address, never through a proxy that would dial it anew.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = GuardedTransport(allowed_hosts={"127.0.0.1"})
    async with httpx.AsyncClient(transport=transport) as client:
        result = await deliver(client, receiver.url)
    assert result.ok
    assert len(receiver.received) == 1
