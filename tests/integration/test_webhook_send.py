"""`send_webhook` through `GuardedTransport` against a real receiver on loopback.

The receiver is a small Starlette app under uvicorn on 127.0.0.1 (random port)
in the test's event loop; it records every request and answers from a script.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.jobs.ssrf import GuardedTransport
from app.jobs.webhook_delivery import AttemptResult, send_webhook

SECRET = "whsec_" + base64.b64encode(b"integration-test-secret-32-bytes").decode()
BODY = b'{"type":"run.completed","timestamp":"2025-01-02T03:04:05Z","data":{"job_id":"r1"}}'


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One scripted answer; `delay_s` holds the response back (released at shutdown)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records requests; answers each with the next scripted `Answer` (200 when none)."""

    def __init__(self) -> None:
        self.url = ""
        self.port = 0
        self.received: list[Received] = []
        self.answers: deque[Answer] = deque()
        self.closing = asyncio.Event()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        self.received.append(Received(dict(request.headers), await request.body()))
        answer = self.answers.popleft() if self.answers else Answer()
        if answer.delay_s:
            try:
                await asyncio.wait_for(self.closing.wait(), answer.delay_s)
            except TimeoutError:
                pass
        return Response(b"receiver says no", answer.status, headers=dict(answer.headers))


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Tests own the process: Ctrl-C must stop pytest, not just this server.
        yield


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = uvicorn.Config(
        receiver.app,
        host="127.0.0.1",
        port=0,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                raise RuntimeError("webhook receiver did not start")
            await asyncio.sleep(0.005)
        receiver.port = server.servers[0].sockets[0].getsockname()[1]
        receiver.url = f"http://127.0.0.1:{receiver.port}/hooks"
        yield receiver
    finally:
        receiver.closing.set()  # release held responses so shutdown does not wait on them
        server.should_exit = True
        await task


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
    assert len(receiver.received) == 1


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
