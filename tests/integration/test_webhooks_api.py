"""Webhook callbacks end to end: submit with `webhook_url`, the embedded worker runs the job
and delivers a signed `run.*` event to a receiver on loopback, on SQLite and PostgreSQL.

The retry schedule is shortened to 0.2 s, 0.2 s (three attempts in all) so that retries
and exhaustion happen within a test.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import pytest
from httpx import AsyncClient, Response
from standardwebhooks.webhooks import Webhook

from app.api.schemas import RunError, RunRead, RunResult, WebhookState
from app.settings import Settings
from tests.conftest import ALICE, BOB, SettingsFactory
from tests.fakes.webhook_receiver import Answer, Received, Receiver, serve_receiver
from tests.support.app import running_app

SECRET = "whsec_" + base64.b64encode(b"webhooks-api-test-secret-32bytes").decode()
PROBLEM = "application/problem+json"
SCHEDULE_S = (0.2, 0.2)
JITTER = 0.2
POLL_S = 0.1
DEADLINE_S = 10.0
PAST_SCHEDULE_S = sum(SCHEDULE_S) * (1 + JITTER) + 2 * POLL_S
"""Long enough for every scheduled retry to have been made, had one been due."""
SETTLE_S = 3 * POLL_S
"""Long enough for a duplicate delivery (a second claim of a due row) to show up."""


def webhook_settings(make_settings: SettingsFactory, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1",
        "webhook_retry_schedule": ",".join(str(s) for s in SCHEDULE_S),
        "poll_interval_s": POLL_S,
    }
    return make_settings(**{**values, **overrides})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as receiver:
        yield receiver


@pytest.fixture
async def api(make_settings: SettingsFactory, receiver: Receiver) -> AsyncIterator[AsyncClient]:
    """The app with webhooks on; it stops before the receiver does."""
    async with running_app(webhook_settings(make_settings)) as client:
        yield client


async def submit_response(api: AsyncClient, url: str, text: str, **extra: object) -> Response:
    body = {"agent": "assistant", "input": text, "webhook_url": url, **extra}
    return await api.post("/agent/submit", json=body, headers=ALICE)


async def submit(api: AsyncClient, url: str, text: str = "What is 17*23?", **extra: object) -> str:
    response = await submit_response(api, url, text, **extra)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def get_run(api: AsyncClient, job_id: str) -> RunRead:
    response = await api.get(f"/agent/status/{job_id}", headers=ALICE)
    assert response.status_code == 200, response.text
    return RunRead.model_validate(response.json())


async def run_when(api: AsyncClient, job_id: str, done: Callable[[RunRead], bool]) -> RunRead:
    """The run once `done(run)` holds; fails the test after `DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        run = await get_run(api, job_id)
        if done(run):
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"run {job_id} did not get there in {DEADLINE_S} s: {run!r}")
        await asyncio.sleep(0.02)


def webhook_is(status: str) -> Callable[[RunRead], bool]:
    return lambda run: run.webhook is not None and run.webhook.status == status


@dataclass(frozen=True)
class Event:
    type: str
    timestamp: datetime
    run: RunRead


def verified(request: Received) -> Event:
    """The event in `request`, after the reference Standard Webhooks library checked it."""
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert isinstance(payload, dict)
    assert set(payload) == {"type", "timestamp", "data"}
    timestamp = datetime.fromisoformat(payload["timestamp"])
    assert timestamp.tzinfo is not None
    return Event(str(payload["type"]), timestamp, RunRead.model_validate(payload["data"]))


def state(
    url: str, status: str, attempts: int, *, code: int | None, error: str | None = None
) -> WebhookState:
    """The expected `webhook` field of a run with no attempt scheduled."""
    return WebhookState(
        url=url,
        status=status,
        attempts=attempts,
        next_attempt_at=None,
        last_status_code=code,
        last_error=error,
    )


async def test_completed_run_is_delivered_once_and_verifies(
    api: AsyncClient, receiver: Receiver
) -> None:
    job_id = await submit(api, receiver.url)

    [request] = await receiver.wait_for(1)
    event = verified(request)
    assert event.type == "run.completed"
    assert event.run.job_id == job_id
    assert event.run.status == "completed"
    assert event.run.result == RunResult(output="The result is 391.")
    assert request.path == "/hooks"
    assert request.headers["webhook-id"].startswith("msg_")

    run = await run_when(api, job_id, webhook_is("delivered"))
    assert run.webhook == state(receiver.url, "delivered", 1, code=200)
    assert run.finished_at is not None
    assert event.timestamp >= run.finished_at.replace(microsecond=0)
    await asyncio.sleep(SETTLE_S)
    assert len(receiver.received) == 1


async def test_500_is_retried_with_the_same_id_and_body(
    api: AsyncClient, receiver: Receiver
) -> None:
    receiver.answers.append(Answer(status=500))
    job_id = await submit(api, receiver.url)

    first, second = await receiver.wait_for(2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    assert verified(first).type == verified(second).type == "run.completed"
    assert second.at - first.at >= SCHEDULE_S[0] * (1 - JITTER) - 0.01

    run = await run_when(api, job_id, webhook_is("delivered"))
    assert run.webhook == state(receiver.url, "delivered", 2, code=200)
    await asyncio.sleep(SETTLE_S)
    assert len(receiver.received) == 2


async def test_410_stops_retries_until_a_manual_retry(api: AsyncClient, receiver: Receiver) -> None:
    receiver.answers.append(Answer(status=410))
    job_id = await submit(api, receiver.url)

    [gone] = await receiver.wait_for(1)
    run = await run_when(api, job_id, webhook_is("failed"))
    assert run.webhook == state(receiver.url, "failed", 1, code=410, error="HTTP 410: gone")
    await asyncio.sleep(PAST_SCHEDULE_S)
    assert len(receiver.received) == 1
    assert (await get_run(api, job_id)).webhook == run.webhook

    other = await api.post(f"/agent/runs/{job_id}/webhook/retry", headers=BOB)
    assert other.status_code == 404
    assert other.headers["content-type"] == PROBLEM

    retried = await api.post(f"/agent/runs/{job_id}/webhook/retry", headers=ALICE)
    assert retried.status_code == 200, retried.text
    webhook = RunRead.model_validate(retried.json()).webhook
    assert webhook is not None
    assert webhook.status in ("pending", "delivered")  # the dispatcher may already be done

    _, again = await receiver.wait_for(2)
    assert again.headers["webhook-id"] == gone.headers["webhook-id"]
    assert again.body == gone.body
    assert verified(again).run.job_id == job_id
    run = await run_when(api, job_id, webhook_is("delivered"))
    assert run.webhook == state(receiver.url, "delivered", 2, code=200)

    nothing_failed = await api.post(f"/agent/runs/{job_id}/webhook/retry", headers=ALICE)
    assert nothing_failed.status_code == 409
    assert nothing_failed.headers["content-type"] == PROBLEM
    problem = nothing_failed.json()
    assert problem["type"] == "conflict"
    assert "no failed webhook delivery" in problem["detail"]


async def test_redirect_is_a_failure_and_is_not_followed(
    api: AsyncClient, receiver: Receiver
) -> None:
    elsewhere = f"{receiver.base_url}/elsewhere"
    redirect = Answer(status=302, headers={"location": elsewhere})
    receiver.answers.extend([redirect] * (len(SCHEDULE_S) + 1))
    job_id = await submit(api, receiver.url)

    run = await run_when(api, job_id, webhook_is("failed"))
    error = f"HTTP 302: redirects are not followed (location: {elsewhere})"
    assert run.webhook == state(receiver.url, "failed", 3, code=302, error=error)
    assert [r.path for r in receiver.received] == ["/hooks"] * 3


async def test_slow_receiver_times_out_and_is_retried(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.answers.append(Answer(delay_s=30))
    # Long enough that the prompt second answer never times out on a loaded CI host (0.3 s
    # once did, and a third attempt was made); the first still takes 15 times longer.
    async with running_app(webhook_settings(make_settings, webhook_timeout_s=2.0)) as api:
        job_id = await submit(api, receiver.url)

        first, second = await receiver.wait_for(2)
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        run = await run_when(api, job_id, webhook_is("delivered"))
        assert run.webhook == state(receiver.url, "delivered", 2, code=200)


async def test_a_receiver_that_never_answers_holds_up_no_other_delivery(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.answers.append(Answer(delay_s=120))
    async with running_app(webhook_settings(make_settings, webhook_timeout_s=60)) as api:
        stuck = await submit(api, receiver.url)
        await receiver.wait_for(1)  # its attempt is under way, and will be for a minute
        prompt = await submit(api, receiver.url)
        run = await run_when(api, prompt, webhook_is("delivered"))
        assert run.webhook == state(receiver.url, "delivered", 1, code=200)
        waiting = await get_run(api, stuck)
        assert waiting.webhook is not None
        assert (waiting.webhook.status, waiting.webhook.attempts) == ("pending", 0)


async def test_sync_run_with_a_webhook_is_delivered_too(
    api: AsyncClient, receiver: Receiver
) -> None:
    body = {"agent": "assistant", "input": "What is 17*23?", "webhook_url": receiver.url}
    response = await api.post("/agent", json=body, headers=ALICE)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]

    [request] = await receiver.wait_for(1)
    event = verified(request)
    assert (event.type, event.run.job_id) == ("run.completed", job_id)
    assert event.run.result == RunResult(output="The result is 391.")


async def test_failed_run_sends_run_failed(api: AsyncClient, receiver: Receiver) -> None:
    job_id = await submit(api, receiver.url, "What is 2*3?", max_turns=1)

    [request] = await receiver.wait_for(1)
    event = verified(request)
    assert event.type == "run.failed"
    assert event.run.job_id == job_id
    assert event.run.status == "failed"
    assert event.run.error == RunError(
        type="max_turns_exceeded", message="the run reached its limit of 1 turns"
    )
    assert event.run.result is None


async def test_paused_run_announces_awaiting_approval_then_completed(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = webhook_settings(make_settings)
    settings.sandbox_dir.mkdir(parents=True)
    (settings.sandbox_dir / "notes.txt").write_text("delete me")
    async with running_app(settings) as api:
        job_id = await submit(api, receiver.url, "delete notes.txt")

        [paused] = await receiver.wait_for(1)
        event = verified(paused)
        assert event.type == "run.awaiting_approval"
        [approval] = event.run.pending_approvals
        assert approval.tool == "delete_file"

        decided = await api.post(
            f"/agent/approvals/{approval.id}",
            json={"decision": "approve"},
            headers={"Authorization": "Bearer ann-key"},
        )
        assert decided.status_code == 200, decided.text
        _, done = await receiver.wait_for(2)
        assert verified(done).type == "run.completed"
        assert done.headers["webhook-id"] != paused.headers["webhook-id"]
        run = await run_when(api, job_id, webhook_is("delivered"))
        assert run.status == "completed"
        assert not (settings.sandbox_dir / "notes.txt").exists()


async def test_awaiting_approval_event_shows_the_run_as_it_was_then(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    # No dispatcher runs while the run pauses and is approved; one starts afterwards.
    settings = webhook_settings(make_settings, embedded_workers=0)
    settings.sandbox_dir.mkdir(parents=True)
    (settings.sandbox_dir / "notes.txt").write_text("delete me")
    async with running_app(settings) as api:
        body = {"agent": "assistant", "input": "delete notes.txt", "webhook_url": receiver.url}
        paused = await api.post("/agent", json=body, headers=ALICE)
        assert paused.status_code == 202, paused.text
        assert paused.json()["status"] == "awaiting_approval"
        [approval] = paused.json()["pending_approvals"]
        decided = await api.post(
            f"/agent/approvals/{approval['id']}",
            json={"decision": "approve"},
            headers={"Authorization": "Bearer ann-key"},
        )
        assert decided.status_code == 200, decided.text

    async with running_app(webhook_settings(make_settings)) as api:
        [request, *_] = await receiver.wait_for(1)
        event = verified(request)
        assert event.type == "run.awaiting_approval"
        assert event.run.status == "awaiting_approval"
        assert [a.tool for a in event.run.pending_approvals] == ["delete_file"]


async def test_delivery_written_without_a_worker_is_sent_when_one_starts(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    async with running_app(webhook_settings(make_settings, embedded_workers=0)) as api:
        job_id = await submit(api, receiver.url)
        run = await get_run(api, job_id)
        assert run.status == "pending"
        assert run.webhook == state(receiver.url, "waiting", 0, code=None)

        cancelled = await api.post(f"/agent/cancel/{job_id}", headers=ALICE)
        assert cancelled.status_code == 200, cancelled.text
        webhook = RunRead.model_validate(cancelled.json()).webhook
        assert webhook is not None
        assert (webhook.status, webhook.attempts) == ("pending", 0)
    assert receiver.received == []

    async with running_app(webhook_settings(make_settings)) as api:
        [request] = await receiver.wait_for(1)
        event = verified(request)
        assert event.type == "run.cancelled"
        assert event.run.job_id == job_id
        assert event.run.status == "cancelled"
        run = await run_when(api, job_id, webhook_is("delivered"))
        assert run.webhook == state(receiver.url, "delivered", 1, code=200)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param(
            "http://user:pw@127.0.0.1/",
            "URLs with credentials (user:password@host) are not allowed",
            id="credentials",
        ),
        pytest.param(
            "ftp://127.0.0.1/", "only http and https URLs are allowed, got 'ftp'", id="ftp"
        ),
        pytest.param(
            "http://169.254.169.254/latest",
            "169.254.169.254 resolves to 169.254.169.254 (link-local, cloud metadata)",
            id="metadata",
        ),
        pytest.param("http://[::1]/", "::1 resolves to ::1 (loopback)", id="ipv6-loopback"),
        pytest.param(
            "http://0x7f000001/", "0x7f000001 resolves to 127.0.0.1 (loopback)", id="hex-ipv4"
        ),
        pytest.param(
            "http://2130706433/", "2130706433 resolves to 127.0.0.1 (loopback)", id="int-ipv4"
        ),
    ],
)
async def test_unsafe_callback_url_is_refused_at_submit(
    make_settings: SettingsFactory, url: str, reason: str
) -> None:
    # 127.0.0.1 is allowlisted: the refusals must not depend on its absence.
    async with running_app(webhook_settings(make_settings)) as api:
        await assert_refused(api, url, f"webhook_url refused: {reason}")


async def test_loopback_is_refused_without_the_allowlist(make_settings: SettingsFactory) -> None:
    settings = webhook_settings(make_settings, webhook_allowed_hosts="")
    async with running_app(settings) as api:
        await assert_refused(
            api,
            "http://127.0.0.1:1/x",
            "webhook_url refused: 127.0.0.1 resolves to 127.0.0.1 (loopback);"
            " only public addresses are allowed",
        )


async def test_webhook_url_needs_a_secret(make_settings: SettingsFactory) -> None:
    settings = webhook_settings(make_settings, webhook_secret=None)
    async with running_app(settings) as api:
        await assert_refused(api, "http://127.0.0.1:1/x", "AGENTSVC_WEBHOOK_SECRET is not set")


async def assert_refused(api: AsyncClient, url: str, detail: str) -> None:
    response = await submit_response(api, url, "What is 1+1?")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "validation_error"
    assert detail in problem["detail"]
