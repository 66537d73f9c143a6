"""Rollouts through the service: traffic policies set by admins, runs assigned to versions
and variants as the policy says, on every replica; shadow runs that never touch the world
or the user; automatic canary rollback."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import select, update

from app.agents.policy import TrafficPolicy, assign
from app.agents.registry import build_registry
from app.runner.state import Checkpoint
from app.services.canary import check_canaries
from app.services.rollouts import PolicyBook
from app.store import policies as policy_store
from app.store.db import Database, create_engine
from app.store.runs import RunRecord, insert_run, record_from_row, runs, tool_results
from tests.conftest import ALICE, ROOT, SettingsFactory
from tests.fakes.llm_server import TextReply, ToolCallReply, serve_fake_openai
from tests.integration.test_cli import agentsvc, cli_env
from tests.support.app import running_app
from tests.support.metrics import scrape
from tests.support.polling import until
from tests.support.runs import new_run

AGENTS = "tests.support.rollout_agents"
USERS = [f"user{i}" for i in range(30)]
MANY_KEYS = ",".join(f"{u}:{u}-key" for u in USERS) + ",root:root-key:admin,alice:alice-key"
QUESTION = "What is 17*23?"
Json = dict[str, Any]
"""A JSON answer, read by the test (its shape is the contract under test)."""


def key(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user}-key"}


async def ask(client: AsyncClient, headers: dict[str, str], text: str = QUESTION) -> Json:
    response = await client.post(
        "/agent", json={"agent": "rollout", "input": text}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def put_policy(client: AsyncClient, policy: Json, **params: int) -> Json:
    response = await client.put(
        "/agent/agents/rollout/policy", json=policy, headers=ROOT, params=params
    )
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    db = Database(create_engine(url, pool_size=2))
    try:
        yield db
    finally:
        await db.dispose()


async def stored_run(db: Database, run_id: object) -> RunRecord:
    async with db.read() as conn:
        row = (
            (await conn.execute(select(runs).where(runs.c.id == uuid.UUID(str(run_id)))))
            .mappings()
            .one()
        )
    return record_from_row(row)


async def shadows_of(db: Database, run_id: object) -> list[RunRecord]:
    async with db.read() as conn:
        rows = await conn.execute(select(runs).where(runs.c.shadow_of == uuid.UUID(str(run_id))))
        return [record_from_row(r) for r in rows.mappings()]


# --- policies: who may change them, and what they must name -----------------------------


async def test_policy_is_read_by_anyone_and_changed_by_admins(
    make_settings: SettingsFactory,
) -> None:
    async with running_app(make_settings(agents_module=AGENTS)) as client:
        fresh = (await client.get("/agent/agents/rollout/policy", headers=ALICE)).json()
        assert fresh["revision"] == 0
        assert fresh["policy"]["stable"] == "1"
        assert fresh["policy"]["canary"] is None

        canary = {"stable": "1", "canary": {"version": "2", "weight": 0.25}}
        refused = await client.put("/agent/agents/rollout/policy", json=canary, headers=ALICE)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"

        written = await put_policy(client, canary)
        assert written["revision"] == 1
        assert written["updated_by"] == "root"
        assert written["policy"]["canary"] == {"version": "2", "weight": 0.25}
        assert (await client.get("/agent/agents/rollout/policy", headers=ALICE)).json() == written
        catalogue = (await client.get("/agent/agents", headers=ALICE)).json()["agents"]
        (rollout,) = [a for a in catalogue if a["name"] == "rollout"]
        assert rollout["policy"] == written["policy"]
        assert [v["version"] for v in rollout["versions"]] == ["1", "2", "3-short"]


@pytest.mark.parametrize(
    ("body", "params", "status", "detail"),
    [
        ({"stable": "9"}, {}, 422, "declares no version '9'"),
        ({"stable": "1", "shadow": {"version": "7", "rate": 0.1}}, {}, 422, "'7'"),
        ({"stable": "1", "canary": {"version": "2", "weight": 2}}, {}, 422, "canary"),
        ({"stable": "1"}, {"expect_revision": 5}, 409, "revision 1, not 5"),
    ],
)
async def test_bad_policies_are_refused_and_change_nothing(
    make_settings: SettingsFactory,
    body: dict[str, object],
    params: dict[str, int],
    status: int,
    detail: str,
) -> None:
    async with running_app(make_settings(agents_module=AGENTS)) as client:
        before = await put_policy(client, {"stable": "2"})
        response = await client.put(
            "/agent/agents/rollout/policy", json=body, headers=ROOT, params=params
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert detail in response.text
        assert (await client.get("/agent/agents/rollout/policy", headers=ROOT)).json() == before


async def test_a_stored_policy_naming_a_removed_version_is_set_aside(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents_module=AGENTS)
    async with database(settings.database_url) as db, db.transaction() as conn:
        # As if an earlier deployment declared version "9" and an admin made it stable.
        await policy_store.put_policy(
            conn, "rollout", {"stable": "9"}, now=datetime.now(UTC), by="root", expect_revision=None
        )
    async with running_app(settings) as client:
        state = (await client.get("/agent/agents/rollout/policy", headers=ROOT)).json()
        assert state["revision"] == 1
        assert state["policy"]["stable"] == "1"
        assert "declares no version '9'" in state["problem"]
        assert (await ask(client, ALICE))["agent_version"] == "1"


async def test_unknown_agent_has_no_policy(make_settings: SettingsFactory) -> None:
    async with running_app(make_settings(agents_module=AGENTS)) as client:
        assert (await client.get("/agent/agents/nope/policy", headers=ROOT)).status_code == 404
        put = await client.put("/agent/agents/nope/policy", json={"stable": "1"}, headers=ROOT)
        assert put.status_code == 404


# --- assignment: canary and A/B variants, sticky, on every replica ------------------------


async def test_runs_are_served_by_the_version_and_variant_the_policy_assigns(
    make_settings: SettingsFactory,
) -> None:
    spec = {
        "stable": "1",
        "canary": {"version": "3-short", "weight": 0.2},
        "experiment": {
            "name": "prompt-ab",
            "variants": [{"name": "control", "version": "1"}, {"name": "new", "version": "2"}],
        },
    }
    policy = TrafficPolicy.model_validate(spec)
    settings = make_settings(agents_module=AGENTS, api_keys=MANY_KEYS)
    async with running_app(settings) as client:
        await put_policy(client, spec)
        seen: dict[str, set[tuple[object, object, object]]] = {}
        for _ in range(2):
            for user in USERS:
                run = await ask(client, key(user))
                seen.setdefault(user, set()).add(
                    (run["agent_version"], run["experiment"], run["variant"])
                )
    for user, served in seen.items():
        expected = assign(policy, agent="rollout", user_id=user, sample=1.0)
        # Sticky: both requests of a user went to the same place, the one assign() names.
        assert served == {(expected.version, expected.experiment, expected.variant)}, user
    versions = {v for served in seen.values() for v, _, _ in served}
    assert versions == {"1", "2", "3-short"}


async def test_a_policy_change_reaches_every_replica_within_seconds(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents_module=AGENTS, policy_refresh_s=0.5)
    async with running_app(settings) as one, running_app(settings) as other:
        assert (await ask(other, ALICE))["agent_version"] == "1"
        await put_policy(one, {"stable": "2"})
        # The replica that made the change applies it at once ...
        assert (await ask(one, ALICE))["agent_version"] == "2"

        # ... the other one once its copy of the policies is older than the refresh period.
        async def other_serves_two() -> bool:
            served: str = (await ask(other, ALICE))["agent_version"]
            return served == "2"

        await until(other_serves_two, "the other replica serving version 2")


# --- shadow runs -----------------------------------------------------------------------------


async def test_a_shadow_run_copies_the_request_and_changes_nothing(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    async with serve_fake_openai() as fake:
        settings = make_settings(
            agents_module=AGENTS,
            openai_base_url=fake.base_url,
            default_model="openai/test-model",
            default_token_budget=100_000,
            lease_seconds=1.5,
        )
        fake.enqueue(
            # The live run writes a note and answers.
            ToolCallReply("note", {"text": "hello"}),
            TextReply("live answer"),
            # Its shadow makes the same call, a new one, and reads the notes.
            ToolCallReply("note", {"text": "hello"}),
            ToolCallReply("note", {"text": "something else"}),
            ToolCallReply("peek", {}),
            TextReply("shadow answer"),
        )
        async with running_app(settings) as client, database(settings.database_url) as db:
            await put_policy(client, {"stable": "1", "shadow": {"version": "2", "rate": 1.0}})
            live = await ask(client, ALICE, "note hello")
            assert live["status"] == "completed"
            assert live["result"] == {"output": "live answer"}
            assert live["agent_version"] == "1"
            used_by_live = (await client.get("/agent/usage", headers=ALICE)).json()["used_tokens"]

            async def finished_shadow() -> RunRecord | None:
                found = await shadows_of(db, live["job_id"])
                return found[0] if found and found[0].status == "completed" else None

            shadow = await until(finished_shadow, "the shadow run finishing")
            assert isinstance(shadow, RunRecord)
            async with db.read() as conn:
                calls = await tool_results(conn, shadow.id)
            usage = (await client.get("/agent/usage", headers=ALICE)).json()
            hidden = await client.get(f"/agent/status/{shadow.id}", headers=ALICE)
            seen_by_admin = await client.get(f"/agent/status/{shadow.id}", headers=ROOT)

    # The world: one note, the live run's.
    assert (tmp_path / "sandbox" / "notes.txt").read_text() == "hello\n"
    assert shadow.agent_version == "2"
    assert shadow.pattern == "shadow"
    assert shadow.user_id == "alice"
    assert shadow.webhook_url is None
    assert shadow.session_id is None
    assert shadow.result == {"output": "shadow answer"}
    assert [(name, status, result) for name, _, status, result in calls] == [
        ("note", "replayed", "noted hello"),
        (
            "note",
            "simulated",
            "note was not executed: this is a shadow run, and it changes nothing",
        ),
        ("peek", "ok", "hello\n"),
    ]
    # The shadow's request started from the live run's input, under its own instructions.
    shadow_first: list[Json] = fake.requests[2]["messages"]  # type: ignore[assignment]
    assert shadow_first[0]["content"] == "Version two."
    assert shadow_first[-1]["content"] == "note hello"
    # Costed, but not to the user: their budget shows the live run's tokens only.
    assert shadow.input_tokens > 0
    assert shadow.llm_calls == 4
    assert usage["used_tokens"] == used_by_live
    # Invisible to the user; the operator sees it.
    assert hidden.status_code == 404
    assert seen_by_admin.status_code == 200
    # Marked done on the live run: it is never shadowed twice.
    async with database(settings.database_url) as db:
        assert (await stored_run(db, live["job_id"])).shadow_version is None
        assert len(await shadows_of(db, live["job_id"])) == 1


async def test_a_cancelled_run_is_not_shadowed(make_settings: SettingsFactory) -> None:
    api_only = make_settings(agents_module=AGENTS, embedded_workers=0)
    async with running_app(api_only) as client, database(api_only.database_url) as db:
        await put_policy(client, {"stable": "1", "shadow": {"version": "2", "rate": 1.0}})
        submitted = await client.post(
            "/agent/submit", json={"agent": "rollout", "input": QUESTION}, headers=ALICE
        )
        job = submitted.json()["job_id"]
        assert (await stored_run(db, job)).shadow_version == "2"
        await client.post(f"/agent/cancel/{job}", headers=ALICE)
        # A worker's queue maintenance now takes the mark off without queueing a shadow.
        async with running_app(make_settings(agents_module=AGENTS, lease_seconds=1.5)):

            async def unmarked() -> bool:
                return (await stored_run(db, job)).shadow_version is None

            await until(unmarked, "the cancelled run's shadow mark cleared")
        assert (await stored_run(db, job)).status == "cancelled"
        assert await shadows_of(db, job) == []


# --- automatic canary rollback ---------------------------------------------------------------


async def test_a_failing_canary_is_rolled_back_automatically(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents_module=AGENTS, lease_seconds=1.5)
    async with running_app(settings) as client:
        before = (await scrape(client)).value("agentsvc_canary_rollbacks_total", agent="rollout")
        for _ in range(5):
            assert (await ask(client, ALICE))["status"] == "completed"
        rule = {"min_runs": 5, "window_runs": 10}
        await put_policy(
            client,
            {"stable": "1", "canary": {"version": "3-short", "weight": 1.0}, "rollback": rule},
        )
        for _ in range(5):
            run = await ask(client, ALICE)
            # One turn is not enough to use the calculator and answer.
            assert (run["agent_version"], run["status"]) == ("3-short", "failed")

        async def rolled_back() -> Json | None:
            state: Json = (await client.get("/agent/agents/rollout/policy", headers=ROOT)).json()
            return state if state["updated_by"] == "rollback" else None

        state = await until(rolled_back, "the canary rolled back")
        assert isinstance(state, dict)
        policy = state["policy"]
        assert state["revision"] == 2
        assert policy["canary"] == {"version": "3-short", "weight": 0.0}
        assert policy["last_rollback"]["version"] == "3-short"
        assert "error rate 100.0% over its last 5 runs" in policy["last_rollback"]["reason"]
        assert "stable's 0.0% over 5" in policy["last_rollback"]["reason"]
        assert (await ask(client, ALICE))["agent_version"] == "1"
        counted = (await scrape(client)).value("agentsvc_canary_rollbacks_total", agent="rollout")
        assert counted == before + 1

        # An admin's next canary of the same version keeps the record; another version clears it.
        again = await put_policy(
            client, {"stable": "1", "canary": {"version": "3-short", "weight": 0.1}}
        )
        assert again["policy"]["last_rollback"] == policy["last_rollback"]
        other = await put_policy(client, {"stable": "1", "canary": {"version": "2", "weight": 0.1}})
        assert other["policy"]["last_rollback"] is None


async def test_a_healthy_canary_stays(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents_module=AGENTS, embedded_workers=0)
    async with running_app(settings) as client, database(settings.database_url) as db:
        for _ in range(5):
            await ask(client, ALICE)
        spec = {
            "stable": "1",
            "canary": {"version": "2", "weight": 1.0},
            "rollback": {"min_runs": 5, "window_runs": 10},
        }
        await put_policy(client, spec)
        for _ in range(5):
            assert (await ask(client, ALICE))["agent_version"] == "2"
        book = PolicyBook(db, build_registry(AGENTS), refresh_s=60)
        assert await check_canaries(db, book) == []
        state = (await client.get("/agent/agents/rollout/policy", headers=ROOT)).json()
        assert (state["revision"], state["updated_by"]) == (1, "root")


async def test_runs_stopped_by_a_spent_budget_do_not_count_against_a_version(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents_module=AGENTS, embedded_workers=0)
    async with running_app(settings), database(settings.database_url) as db:
        now = datetime.now(UTC)
        finished = [("completed", None), ("failed", "tool_error"), ("failed", "budget_exceeded")]
        async with db.transaction() as conn:
            for i, (status, error) in enumerate([*finished, ("cancelled", None)]):
                run = new_run(
                    agent="rollout", agent_version="2", created_at=now + timedelta(seconds=i)
                )
                await insert_run(conn, run, checkpoint=Checkpoint(next_seq=1), events=[])
                await conn.execute(
                    update(runs)
                    .where(runs.c.id == run.id)
                    .values(
                        status=status,
                        error=None if error is None else {"type": error, "message": "…"},
                        started_at=now,
                        finished_at=now + timedelta(seconds=2),
                    )
                )
        async with db.read() as conn:
            outcomes = await policy_store.latest_outcomes(conn, "rollout", "2", limit=10)
        # Newest first; the cancelled run and the one the user's budget stopped are left out.
        assert outcomes == [(True, 2.0), (False, 2.0)]


# --- the CLI -----------------------------------------------------------------------------------


def test_policy_cli_sets_and_shows(tmp_path: Path) -> None:
    env = cli_env(tmp_path, AGENTSVC_AGENTS_MODULE=AGENTS)
    spec = '{"stable": "1", "canary": {"version": "2", "weight": 0.1}}'
    written = agentsvc("policy", "set", "rollout", spec, env=env)
    assert written.returncode == 0, written.stderr
    shown = agentsvc("policy", "show", "rollout", env=env)
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)  # the answer of GET /agent/agents/{agent}/policy
    assert state["revision"] == 1
    assert state["policy"]["canary"]["weight"] == 0.1
    assert state["updated_by"] == "cli"
    assert datetime.fromisoformat(state["updated_at"]).tzinfo is not None
    (tmp_path / "p.json").write_text('{"stable": "9"}')
    refused = agentsvc("policy", "set", "rollout", f"@{tmp_path / 'p.json'}", env=env)
    assert refused.returncode == 1
    assert "declares no version '9'" in refused.stderr
    conflict = agentsvc("policy", "set", "rollout", spec, "--expect-revision", "0", env=env)
    assert conflict.returncode == 1
    assert "revision 1, not 0" in conflict.stderr
