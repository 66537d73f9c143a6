"""An LLM call's tools are stored once per distinct set: trace rows name them by digest, and
the trace shows them whole, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from app.store.db import Database, create_engine
from app.store.runs import llm_calls_t
from app.store.tool_sets import DIGEST_KEY, tool_sets_t
from tests.conftest import ALICE, SettingsFactory
from tests.support.app import running_app


async def test_the_tools_of_every_call_are_stored_once_and_traced_whole(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        jobs = []
        for text in ("What is 17*23?", "What is 2+2?"):
            response = await client.post(
                "/agent", json={"agent": "assistant", "input": text}, headers=ALICE
            )
            assert response.json()["status"] == "completed"
            jobs.append(response.json()["job_id"])
        trace = (await client.get(f"/agent/runs/{jobs[1]}/trace", headers=ALICE)).json()
        catalogue = (await client.get("/agent/agents", headers=ALICE)).json()
    db = Database(create_engine(settings.database_url, pool_size=1))
    try:
        async with db.read() as conn:
            sets = (await conn.execute(select(tool_sets_t))).all()
            requests = (await conn.execute(select(llm_calls_t.c.request))).scalars().all()
    finally:
        await db.dispose()
    # Two runs, two calls each, one set of tools.
    assert len(requests) == 4
    assert len(sets) == 1
    assert {r[DIGEST_KEY] for r in requests} == {sets[0].digest}
    assert all("tools" not in r for r in requests)
    (assistant,) = [a for a in catalogue["agents"] if a["name"] == "assistant"]
    offered = {t["name"] for t in assistant["tools"]}
    for call in trace["llm_calls"]:
        assert DIGEST_KEY not in call["request"]
        assert {t["name"] for t in call["request"]["tools"]} == offered
        assert call["request"]["tools"] == sets[0].tools
