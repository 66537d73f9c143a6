"""Stored API keys over HTTP on SQLite and PostgreSQL: admins issue, list and revoke them;
a key is shown once; nobody else may."""

from __future__ import annotations

from httpx import AsyncClient

from tests.conftest import ALICE, ROOT, SettingsFactory
from tests.support.app import running_app

PROBLEM = "application/problem+json"


async def test_admins_issue_list_and_revoke_keys(make_settings: SettingsFactory) -> None:
    async with running_app(make_settings()) as client:
        issued = await client.post(
            "/agent/admin/keys", json={"user": "carol", "role": "approver"}, headers=ROOT
        )
        assert issued.status_code == 201, issued.text
        body = issued.json()
        assert (body["user"], body["role"], body["revoked_at"]) == ("carol", "approver", None)
        carol = {"Authorization": f"Bearer {body['key']}"}
        assert (await client.get("/agent/approvals", headers=carol)).status_code == 200

        listed = (await client.get("/agent/admin/keys", headers=ROOT)).json()["keys"]
        assert [(k["id"], k["user"]) for k in listed] == [(body["id"], "carol")]
        assert "key" not in listed[0]
        assert body["key"] not in str(listed)
        assert (await client.get("/agent/admin/keys?user=dave", headers=ROOT)).json() == {
            "keys": []
        }

        revoked = await client.delete(f"/agent/admin/keys/{body['id']}", headers=ROOT)
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        again = await client.delete(f"/agent/admin/keys/{body['id']}", headers=ROOT)
        assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    # A new process (no lookup cache yet) refuses the revoked key.
    async with running_app(make_settings()) as client:
        assert (await client.get("/agent/approvals", headers=carol)).status_code == 401


async def test_only_admins_manage_keys_and_bad_input_is_refused(client: AsyncClient) -> None:
    for method, url, body in (
        ("POST", "/agent/admin/keys", {"user": "x"}),
        ("GET", "/agent/admin/keys", None),
        ("DELETE", "/agent/admin/keys/00000000-0000-0000-0000-000000000000", None),
    ):
        response = await client.request(method, url, json=body, headers=ALICE)
        assert response.status_code == 403, (method, url)
        assert response.headers["content-type"] == PROBLEM
    for bad in ({"user": ""}, {"user": "x", "role": "root"}, {"user": "x", "colour": 1}):
        response = await client.post("/agent/admin/keys", json=bad, headers=ROOT)
        assert response.status_code == 422, bad
    missing = await client.delete(
        "/agent/admin/keys/00000000-0000-0000-0000-000000000000", headers=ROOT
    )
    assert missing.status_code == 404
    assert (await client.delete("/agent/admin/keys/nope", headers=ROOT)).status_code == 404
