"""Queue pattern in one process: submit, poll, cancel at each stage, approvals."""

from __future__ import annotations

import asyncio
import time

import pytest
from httpx import AsyncClient

from tests.conftest import ALICE, BOB, SettingsFactory
from tests.fakes.llm_server import HangReply, TextReply, ToolCallReply, serve_fake_openai
from tests.support.app import running_app
from tests.support.polling import until

ANN = {"Authorization": "Bearer ann-key"}
ROOT = {"Authorization": "Bearer root-key"}
FAST = {"poll_interval_s": 0.05}
CUSTOM = "tests.support.custom_agents"


async def status_of(client: AsyncClient, job: str) -> dict[str, object]:
    response = await client.get(f"/agent/status/{job}", headers=ALICE)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def wait_status(client: AsyncClient, job: str, *statuses: str) -> dict[str, object]:
    seen: dict[str, object] = {}

    async def reached() -> bool:
        seen.update(await status_of(client, job))
        return seen["status"] in statuses

    await until(reached, what=f"run {job} to reach {statuses}")
    return seen


async def submit(client: AsyncClient, text: str, agent: str = "assistant") -> str:
    response = await client.post(
        "/agent/submit", json={"agent": agent, "input": text}, headers=ALICE
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["status_url"].endswith(f"/agent/status/{body['job_id']}")
    job: str = body["job_id"]
    return job


async def test_submitted_run_is_claimed_and_completed(make_settings: SettingsFactory) -> None:
    async with running_app(make_settings(**FAST)) as client:
        job = await submit(client, "What is 17*23?")
        body = await wait_status(client, job, "completed")
        assert body["result"] == {"output": "The result is 391."}
        assert body["started_at"] is not None
        assert (await client.get(f"/agent/status/{job}", headers=BOB)).status_code == 404


async def test_cancel_pending_run_at_once_and_again_changes_nothing(
    make_settings: SettingsFactory,
) -> None:
    async with running_app(make_settings(embedded_workers=0)) as client:
        job = await submit(client, "What is 1+1?")
        assert (await status_of(client, job))["status"] == "pending"
        assert (await client.post(f"/agent/cancel/{job}", headers=BOB)).status_code == 404
        first = await client.post(f"/agent/cancel/{job}", headers=ALICE)
        assert first.status_code == 200
        assert first.json()["status"] == "cancelled"
        assert first.json()["finished_at"] is not None
        again = await client.post(f"/agent/cancel/{job}", headers=ALICE)
        assert again.json() == first.json()


async def test_cancel_finished_run_changes_nothing(client: AsyncClient) -> None:
    done = (
        await client.post(
            "/agent", json={"agent": "assistant", "input": "What is 2+2?"}, headers=ALICE
        )
    ).json()
    after = await client.post(f"/agent/cancel/{done['job_id']}", headers=ALICE)
    assert after.status_code == 200
    assert after.json() == done


async def test_cancel_aborts_an_in_flight_llm_call(make_settings: SettingsFactory) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(HangReply())
        settings = make_settings(
            default_model="openai/gpt-4o-mini", openai_base_url=fake.base_url, **FAST
        )
        async with running_app(settings) as client:
            job = await submit(client, "anything")
            await until(lambda: _requested(fake, 1), what="the LLM call")
            started = time.monotonic()
            response = await client.post(f"/agent/cancel/{job}", headers=ALICE)
            assert response.status_code == 200
            body = await wait_status(client, job, "cancelled")
            assert time.monotonic() - started < 5
            assert body["result"] is None
            usage = body["usage"]
            assert isinstance(usage, dict)
            assert usage["llm_calls"] == 1


async def _requested(fake: object, n: int) -> bool:
    return len(fake.requests) >= n  # type: ignore[attr-defined]


async def test_cancel_during_a_tool_stops_before_the_next_llm_call(
    make_settings: SettingsFactory,
) -> None:
    async with serve_fake_openai() as fake:
        fake.enqueue(ToolCallReply("nap", {"seconds": 0.5}), TextReply("never asked"))
        settings = make_settings(openai_base_url=fake.base_url, agents_module=CUSTOM, **FAST)
        async with running_app(settings) as client:
            job = await submit(client, "nap", agent="worker-agent")
            await until(lambda: _requested(fake, 1), what="the first LLM call")
            await asyncio.sleep(0.1)
            await client.post(f"/agent/cancel/{job}", headers=ALICE)
            body = await wait_status(client, job, "cancelled")
            usage = body["usage"]
            assert isinstance(usage, dict)
            assert usage["tool_calls"] == 1
            assert len(fake.requests) == 1
            trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
            assert trace["tool_calls"][0]["status"] == "ok"


@pytest.fixture
def sandbox_settings(make_settings: SettingsFactory) -> SettingsFactory:
    def make(**overrides: object) -> object:
        settings = make_settings(**FAST, **overrides)
        settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
        (settings.sandbox_dir / "notes.txt").write_text("keep me")
        (settings.sandbox_dir / "other.txt").write_text("other")
        return settings

    return make  # type: ignore[return-value]


async def pending_approval(client: AsyncClient, job: str) -> dict[str, object]:
    body = await wait_status(client, job, "awaiting_approval")
    approvals = body["pending_approvals"]
    assert isinstance(approvals, list)
    (approval,) = approvals
    assert isinstance(approval, dict)
    return approval


async def test_approve_runs_the_tool_once(sandbox_settings: SettingsFactory) -> None:
    settings = sandbox_settings()
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        assert approval["tool"] == "delete_file"
        assert (settings.sandbox_dir / "notes.txt").exists()

        assert (await client.get("/agent/approvals", headers=ALICE)).status_code == 403
        listed = (await client.get("/agent/approvals", headers=ANN)).json()["approvals"]
        assert [a["id"] for a in listed] == [approval["id"]]

        own = await client.post(
            f"/agent/approvals/{approval['id']}", json={"decision": "approve"}, headers=ALICE
        )
        assert own.status_code == 403
        decided = await client.post(
            f"/agent/approvals/{approval['id']}",
            json={"decision": "approve", "reason": "fine"},
            headers=ANN,
        )
        assert decided.status_code == 200
        assert decided.json()["status"] == "approved"
        assert decided.json()["decided_by"] == "ann"
        twice = await client.post(
            f"/agent/approvals/{approval['id']}", json={"decision": "deny"}, headers=ROOT
        )
        assert twice.status_code == 409

        body = await wait_status(client, job, "completed")
        assert not (settings.sandbox_dir / "notes.txt").exists()
        assert "deleted" in str(body["result"])
        trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
        assert [t["status"] for t in trace["tool_calls"]] == ["ok"]


async def test_deny_tells_the_model_and_runs_nothing(sandbox_settings: SettingsFactory) -> None:
    settings = sandbox_settings()
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        await client.post(
            f"/agent/approvals/{approval['id']}",
            json={"decision": "deny", "reason": "keep it"},
            headers=ANN,
        )
        body = await wait_status(client, job, "completed")
        assert (settings.sandbox_dir / "notes.txt").read_text() == "keep me"
        assert "keep it" in str(body["result"])


async def test_edited_arguments_are_validated_then_used(
    sandbox_settings: SettingsFactory,
) -> None:
    settings = sandbox_settings()
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        url = f"/agent/approvals/{approval['id']}"
        bad = await client.post(
            url, json={"decision": "approve", "arguments": {"file": 1}}, headers=ANN
        )
        assert bad.status_code == 422
        assert "path" in bad.json()["detail"]
        good = await client.post(
            url, json={"decision": "approve", "arguments": {"path": "other.txt"}}, headers=ANN
        )
        assert good.status_code == 200
        await wait_status(client, job, "completed")
        assert (settings.sandbox_dir / "notes.txt").exists()
        assert not (settings.sandbox_dir / "other.txt").exists()


async def test_unanswered_approval_expires(sandbox_settings: SettingsFactory) -> None:
    # Long enough that polling sees the run waiting before it expires, even on a loaded host.
    settings = sandbox_settings(approval_ttl_s=1.5, lease_seconds=0.6)
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        body = await wait_status(client, job, "completed")
        assert "nobody approved" in str(body["result"])
        assert (settings.sandbox_dir / "notes.txt").exists()
        late = await client.post(
            f"/agent/approvals/{approval['id']}", json={"decision": "approve"}, headers=ANN
        )
        assert late.status_code == 409


async def test_self_approval_when_allowed(sandbox_settings: SettingsFactory) -> None:
    settings = sandbox_settings(
        allow_self_approval=True, api_keys="alice:alice-key:approver,ann:ann-key:approver"
    )
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        own = await client.post(
            f"/agent/approvals/{approval['id']}", json={"decision": "approve"}, headers=ALICE
        )
        assert own.status_code == 200
        await wait_status(client, job, "completed")


async def test_cancel_while_awaiting_approval(sandbox_settings: SettingsFactory) -> None:
    settings = sandbox_settings()
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        body = (await client.post(f"/agent/cancel/{job}", headers=ALICE)).json()
        assert body["status"] == "cancelled"
        assert body["pending_approvals"] == []
        late = await client.post(
            f"/agent/approvals/{approval['id']}", json={"decision": "approve"}, headers=ANN
        )
        assert late.status_code == 409
        assert (settings.sandbox_dir / "notes.txt").exists()


async def test_run_of_a_dead_worker_resumes_from_its_checkpoint(
    make_settings: SettingsFactory,
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from app.store.db import Database, create_engine
    from app.store.runs import runs

    async with running_app(make_settings(embedded_workers=0)) as client:
        job = await submit(client, "What is 5*5?")
    db = Database(create_engine(make_settings().database_url, pool_size=1))
    try:
        async with db.transaction() as conn:
            await conn.execute(
                update(runs).values(
                    status="running",
                    lease_owner="a-worker-that-died",
                    attempt=1,
                    lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                )
            )
    finally:
        await db.dispose()
    async with running_app(make_settings(lease_seconds=0.6, **FAST)) as client:
        body = await wait_status(client, job, "completed")
        assert body["result"] == {"output": "The result is 25."}


async def test_two_claims_race_for_one_run_and_one_wins(make_settings: SettingsFactory) -> None:
    from datetime import UTC, datetime

    from app.store import queue
    from app.store.db import Database, create_engine

    async with running_app(make_settings(embedded_workers=0)) as client:
        job = await submit(client, "What is 1+1?")
    db = Database(create_engine(make_settings().database_url, pool_size=4))

    async def claim(owner: str) -> list[str]:
        claimed = await queue.claim_runs(
            db, owner=owner, lease_s=30, limit=1, now=datetime.now(UTC)
        )
        return [str(r.id) for r in claimed]

    try:
        first, second = await asyncio.gather(claim("w1"), claim("w2"))
    finally:
        await db.dispose()
    assert sorted([first, second]) == [[], [job]]


async def test_unknown_approval_is_404_by_its_own_name(client: AsyncClient) -> None:
    for approval_id in ("not-an-id", "00000000-0000-0000-0000-000000000000"):
        response = await client.post(
            f"/agent/approvals/{approval_id}", json={"decision": "approve"}, headers=ANN
        )
        assert response.status_code == 404
        assert response.json()["detail"] == f"approval {approval_id} not found"
