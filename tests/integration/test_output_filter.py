"""The output filter on every byte a user sees: streamed text at any chunk size, the
result, the trace (raw for admins only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from tests.conftest import ALICE, ROOT, SettingsFactory
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.support.sse import collect

SECRETS = {
    "card": "4111 1111 1111 1111",
    "email": "jane.doe@example.com",
    "iban": "DE89 3704 0044 0532 0130 00",
    "key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "ssn": "536-22-8714",
}
SAID = (
    f"card {SECRETS['card']}, mail {SECRETS['email']}, iban {SECRETS['iban']}, "
    f"key {SECRETS['key']}, ssn {SECRETS['ssn']}, total 17*23 = 391 at 2026-11-27T21:13:06Z"
)
SHOWN = (
    "card [CREDIT_CARD_REDACTED], mail [EMAIL_REDACTED], iban [IBAN_REDACTED], "
    "key [API_KEY_REDACTED], ssn [US_SSN_REDACTED], total 17*23 = 391 at 2026-11-27T21:13:06Z"
)


def leaks(text: str) -> list[str]:
    """The sensitive values, or a recognisable piece of one, found in `text`."""
    pieces = [*SECRETS.values(), "jane.doe", "example.com", "4111 1111", "0532 0130", "Ab3dEf6h"]
    return [p for p in pieces if p in text]


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(script_app()) as model_url:
        settings = make_settings(
            agents_module="tests.support.custom_agents", openai_base_url=f"{model_url}/v1"
        )
        async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
            async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=20) as c:
                yield c


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 11])
async def test_streamed_text_never_leaks_at_any_chunk_size(
    client: httpx.AsyncClient, chunk: int
) -> None:
    body = {"agent": "worker-agent", "input": f"chunk {chunk}; say {SAID}"}
    async with client.stream("POST", "/agent/stream", json=body) as response:
        raw = (await response.aread()).decode()
    assert not leaks(raw)
    async with client.stream("POST", "/agent/stream", json=body) as response:
        events = await collect(response)
    deltas = "".join(str(e.json()["text"]) for e in events if e.event == "llm.delta")
    assert deltas == SHOWN
    assert events[-1].json()["result"] == {"output": SHOWN}


async def test_result_and_trace_are_filtered_for_users_raw_for_admins(
    client: httpx.AsyncClient,
) -> None:
    body = {"agent": "worker-agent", "input": f"calc 2+2; say {SAID}"}
    run = (await client.post("/agent", json=body)).json()
    assert run["result"] == {"output": SHOWN}
    status = await client.get(f"/agent/status/{run['job_id']}")
    assert not leaks(status.text)

    users = await client.get(f"/agent/runs/{run['job_id']}/trace")
    assert not leaks(users.text)
    assert SHOWN in users.text
    admins = await client.get(f"/agent/runs/{run['job_id']}/trace", headers=ROOT)
    assert admins.json()["llm_calls"][-1]["response"]["message"]["content"] == SAID


async def test_session_history_is_filtered_for_users_raw_for_admins(
    client: httpx.AsyncClient,
) -> None:
    session = (await client.post("/agent/sessions", json={"agent": "worker-agent"})).json()
    url = f"/agent/sessions/{session['session_id']}"
    answer = await client.post(f"{url}/messages", json={"input": f"say {SAID}"})
    assert answer.json()["result"] == {"output": SHOWN}

    users = await client.get(url)
    assert not leaks(users.text)
    assert users.json()["messages"][-1]["content"] == SHOWN
    admins = await client.get(url, headers=ROOT)
    assert admins.json()["messages"][-1]["content"] == SAID
