"""Deciding an approval while its run is cancelled, and what a decision may carry."""

from __future__ import annotations

import asyncio

from tests.conftest import ALICE, SettingsFactory
from tests.integration.test_jobs import ANN, FAST, pending_approval, submit, wait_status
from tests.support.app import running_app

ROUNDS = 20


async def test_decide_and_cancel_at_once_serialize(make_settings: SettingsFactory) -> None:
    # Both lock the run and its approval; on PostgreSQL opposite orders deadlocked (a 500).
    settings = make_settings(**FAST)
    settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
    async with running_app(settings) as client:
        for i in range(ROUNDS):
            target = settings.sandbox_dir / f"race{i}.txt"
            target.write_text("keep me")
            job = await submit(client, f"delete race{i}.txt")
            approval = await pending_approval(client, job)
            decided, cancelled = await asyncio.gather(
                client.post(
                    f"/agent/approvals/{approval['id']}", json={"decision": "approve"}, headers=ANN
                ),
                client.post(f"/agent/cancel/{job}", headers=ALICE),
            )
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["job_id"] == job
            final = await wait_status(client, job, "completed", "failed", "cancelled")
            trace = (await client.get(f"/agent/runs/{job}/trace", headers=ALICE)).json()
            ran = [t["status"] for t in trace["tool_calls"]]
            if decided.status_code == 409:  # the cancel won: the approval was cancelled
                assert decided.json()["type"] == "conflict"
                assert cancelled.json()["status"] == "cancelled"
                assert cancelled.json()["pending_approvals"] == []
                assert final["status"] == "cancelled"
                assert ran == []
                assert target.exists()
            else:  # the approval won: the cancel found the run resumed and went on from there
                assert decided.status_code == 200, decided.text
                assert decided.json()["status"] == "approved"
                assert final["status"] in ("cancelled", "completed")
                assert ran in ([], ["ok"])
                assert target.exists() == (ran == [])
                if final["status"] == "completed":
                    assert ran == ["ok"]


async def test_deny_with_arguments_is_refused_and_stores_nothing(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(**FAST)
    settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
    (settings.sandbox_dir / "notes.txt").write_text("keep me")
    async with running_app(settings) as client:
        job = await submit(client, "delete notes.txt")
        approval = await pending_approval(client, job)
        url = f"/agent/approvals/{approval['id']}"
        refused = await client.post(
            url, json={"decision": "deny", "arguments": {"path": "other.txt"}}, headers=ANN
        )
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "validation_error"
        assert "arguments can only be given with approve" in refused.json()["detail"]

        listed = (await client.get("/agent/approvals", headers=ANN)).json()["approvals"]
        assert [(a["id"], a["status"], a["arguments"]) for a in listed] == [
            (approval["id"], "pending", approval["arguments"])
        ]
        denied = await client.post(url, json={"decision": "deny", "arguments": None}, headers=ANN)
        assert denied.status_code == 200, denied.text
        assert denied.json()["status"] == "denied"
        assert denied.json()["arguments"] == approval["arguments"]
        await wait_status(client, job, "completed")
        assert (settings.sandbox_dir / "notes.txt").read_text() == "keep me"
