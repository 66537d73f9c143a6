"""`GET /agent/runs` on SQLite and PostgreSQL: the caller's runs, newest first, filtered,
a page at a time; nobody else's (admins: everyone's)."""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.support.app import running_app

PROBLEM = "application/problem+json"


async def start(client: AsyncClient, route: str, headers: dict[str, str], **extra: object) -> str:
    body = {"agent": "assistant", "input": "What is 17*23?", **extra}
    response = await client.post(route, json=body, headers=headers)
    assert response.status_code in (200, 202), response.text
    job: str = response.json()["job_id"]
    return job


async def listed(client: AsyncClient, headers: dict[str, str], **params: str | int) -> list[str]:
    response = await client.get("/agent/runs", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [r["job_id"] for r in response.json()["runs"]]


async def test_runs_are_listed_newest_first_filtered_and_paged(
    make_settings: SettingsFactory,
) -> None:
    # No worker: submitted runs stay pending.
    async with running_app(make_settings(embedded_workers=0)) as client:
        session = (
            await client.post("/agent/sessions", json={"agent": "assistant"}, headers=ALICE)
        ).json()["session_id"]
        alices = [
            await start(client, "/agent", ALICE),
            await start(client, "/agent/submit", ALICE),
            await start(client, "/agent", ALICE, session_id=session),
            await start(client, "/agent/submit", ALICE),
            await start(client, "/agent", ALICE),
        ]
        bobs = [await start(client, "/agent", BOB)]
        newest_first = alices[::-1]

        page = (await client.get("/agent/runs", headers=ALICE)).json()
        assert [r["job_id"] for r in page["runs"]] == newest_first
        assert page["next_before"] is None
        assert page["runs"][0]["status"] == "completed"
        assert page["runs"][0]["stream_url"]

        seen, before = [], None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if before is not None:
                params["before"] = before
            response = (await client.get("/agent/runs", params=params, headers=ALICE)).json()
            seen += [r["job_id"] for r in response["runs"]]
            before = response["next_before"]
            if before is None:
                break
        assert seen == newest_first

        assert await listed(client, ALICE, status="pending") == [alices[3], alices[1]]
        assert await listed(client, ALICE, session_id=session) == [alices[2]]
        assert await listed(client, ALICE, agent="other") == []
        assert await listed(client, BOB) == bobs
        assert await listed(client, ROOT, limit=100) == [*bobs, *newest_first]
        assert await listed(client, ROOT, user="bob") == bobs
        assert await listed(client, ALICE, user="alice") == newest_first

        refused = await client.get("/agent/runs", params={"user": "bob"}, headers=ALICE)
        assert refused.status_code == 403
        # Another user's run cannot anchor a page: it does not exist for bob.
        foreign = await client.get("/agent/runs", params={"before": alices[0]}, headers=BOB)
        assert foreign.status_code == 422
        assert foreign.headers["content-type"] == PROBLEM
        assert "not found" in foreign.json()["detail"]
        assert (await client.get("/agent/runs")).status_code == 401


@pytest.mark.parametrize(
    "params",
    [{"status": "bogus"}, {"limit": 0}, {"limit": 101}, {"before": "x"}, {"colour": "red"}],
)
async def test_bad_listing_queries_are_422(
    client: AsyncClient, params: dict[str, str | int]
) -> None:
    response = await client.get("/agent/runs", params=params, headers=ALICE)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
