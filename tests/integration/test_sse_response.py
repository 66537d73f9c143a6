"""The SSE response itself: what one wake-up writes, pings, a client leaving, the server
stopping. SQLite and PostgreSQL, with the Redis bus (its subscriptions are visible)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
from asgi_lifespan import LifespanManager
from starlette.types import Message

from app.main import create_app
from tests.conftest import ALICE, SettingsFactory
from tests.fakes.loopback import serve_app
from tests.integration.test_cli import cli_env, free_port
from tests.integration.test_stream import TEST_REDIS
from tests.support.polling import until
from tests.support.processes import start_agentsvc, stop_all, wait_ready
from tests.support.sse import SSEvent, parse

SUBMIT = {"agent": "assistant", "input": "What is 17*23?"}


def frames(body: bytes) -> list[dict[str, str]]:
    """The SSE blocks of `body`, field by field (comments under "")."""
    out = []
    for block in body.split(b"\r\n\r\n"):
        if block:
            fields = [line.decode().partition(": ") for line in block.split(b"\r\n")]
            out.append({name: value for name, _, value in fields})
    return out


async def test_a_replay_goes_out_in_one_body_message_of_separate_events(
    make_settings: SettingsFactory,
) -> None:
    async with LifespanManager(create_app(make_settings())) as manager:
        app = manager.app
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agentsvc") as client:
            run = (await client.post("/agent", json=SUBMIT, headers=ALICE)).json()
        assert run["status"] == "completed"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/agent/stream/{run['job_id']}",
            "raw_path": f"/agent/stream/{run['job_id']}".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"agentsvc"), (b"authorization", b"Bearer alice-key")],
            "client": ("127.0.0.1", 1),
            "server": ("agentsvc", 80),
        }
        sent: list[Message] = []
        requested = False
        never = asyncio.Event()

        async def receive() -> Message:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # the client stays: the stream ends with the run's end
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        async with asyncio.timeout(20):
            await app(scope, receive, send)

    assert sent[0]["status"] == 200
    bodies = [m["body"] for m in sent[1:]]
    assert sent[-1]["more_body"] is False
    with_events = [b for b in bodies if b"\r\nid: " in b or b.startswith(b"id: ")]
    # The whole replay was one wake-up: one message, one socket write.
    assert len(with_events) == 1
    events = frames(with_events[0])
    assert len(events) > 3
    assert [int(e["id"]) for e in events] == list(range(len(events)))
    assert events[0]["event"] == "run.started"
    assert events[-1]["event"] == "run.completed"
    assert frames(bodies[0]) == [{"": f"run {run['job_id']}", "retry": "2000"}]


@dataclass
class Pending:
    """A loopback server without workers: a submitted run stays pending, its stream idle."""

    client: httpx.AsyncClient
    redis: redis.Redis

    async def submit(self) -> str:
        job: str = (await self.client.post("/agent/submit", json=SUBMIT)).json()["job_id"]
        return job

    async def subscribers(self, job: str) -> int:
        """This run's subscriptions in Redis: one per API process with readers of it."""
        channel = f"agentsvc:events:{job}"
        counts = dict(await self.redis.pubsub_numsub(channel))
        return int(counts[channel.encode()])


@pytest.fixture
async def pending(make_settings: SettingsFactory) -> AsyncIterator[Pending]:
    client = redis.Redis.from_url(TEST_REDIS)
    await client.flushdb()
    settings = make_settings(redis_url=TEST_REDIS, embedded_workers=0, stream_ping_s=300)
    try:
        async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
            async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=20) as http:
                yield Pending(http, client)
    finally:
        await client.flushdb()
        await client.aclose()


async def first_event(response: httpx.Response) -> SSEvent:
    async for event in parse(response):
        if event.id is not None:
            return event
    raise AssertionError("the stream ended without an event")


async def test_a_client_that_leaves_releases_its_subscription_at_once(pending: Pending) -> None:
    job = await pending.submit()
    async with pending.client.stream("GET", f"/agent/stream/{job}") as response:
        assert (await first_event(response)).event == "run.started"

        async def subscribed() -> bool:
            return await pending.subscribers(job) == 1

        await until(subscribed, "the stream's Redis subscription")
    # Disconnected. The next ping is 300 s away: only watching the connection notices.

    async def released() -> bool:
        return await pending.subscribers(job) == 0

    await until(released, "the subscription released after the client left")
    status = (await pending.client.get(f"/agent/status/{job}")).json()
    assert status["status"] == "pending"


async def test_an_idle_stream_sends_ping_comments(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(embedded_workers=0, stream_ping_s=0.2)
    async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
        async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=20) as client:
            job = (await client.post("/agent/submit", json=SUBMIT)).json()["job_id"]
            async with client.stream("GET", f"/agent/stream/{job}") as response:
                blocks = parse(response)
                assert (await anext(blocks)).retry == 2000
                assert (await anext(blocks)).event == "run.started"
                # A pending run sends nothing more: only pings keep proxies from timing out.
                for _ in range(2):
                    ping = await anext(blocks)
                    assert (ping.id, ping.event, ping.comments) == (None, None, ["ping"])


async def test_stopping_the_server_ends_its_streams(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        tmp_path,
        AGENTSVC_API_KEYS="demo:demo-key",
        AGENTSVC_PORT=str(port),
        AGENTSVC_EMBEDDED_WORKERS="0",
    )
    proc = start_agentsvc("serve", env=env, log=tmp_path / "serve.log")
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        headers = {"Authorization": "Bearer demo-key"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            job = (await client.post("/agent/submit", json=SUBMIT)).json()["job_id"]
            seen: list[SSEvent] = []
            async with client.stream("GET", f"/agent/stream/{job}") as response:
                # The stream ends cleanly (a read timeout or a broken response fails here),
                # long before its lifetime: the client reconnects to another replica.
                async for event in parse(response):
                    if event.id is not None:
                        seen.append(event)
                        if len(seen) == 1:
                            proc.send_signal(signal.SIGTERM)
        assert [e.event for e in seen] == ["run.started"]
        assert await asyncio.to_thread(proc.wait, 30) in (0, -signal.SIGTERM)
    finally:
        stop_all([proc])
