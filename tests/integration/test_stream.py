"""SSE over a real loopback server: `POST /agent/stream`, attaching, resuming, access.

SQLite runs with the in-process bus, PostgreSQL with the Redis bus.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import delete

from app.main import create_app
from app.store.db import create_engine
from app.store.runs import runs
from tests.conftest import ALICE, BOB, SettingsFactory
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.support.sse import TERMINAL, SSEvent, collect, parse

TEST_REDIS = "redis://127.0.0.1:6379/9"
CUT_OFF_LINE = "SSE client too slow: cut off after 0.5 s without progress"


@dataclass
class Server:
    base_url: str
    client: httpx.AsyncClient
    """Authorized as alice."""


@pytest.fixture
async def server(make_settings: SettingsFactory, db_url: str) -> AsyncIterator[Server]:
    async with serve_app(script_app()) as model_url:
        settings = make_settings(
            agents_module="tests.support.custom_agents",
            openai_base_url=f"{model_url}/v1",
            redis_url=None if db_url.startswith("sqlite") else TEST_REDIS,
            stream_token_ttl_s=1,
            stream_poll_s=0.2,
        )
        async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
            async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=20) as client:
                yield Server(base, client)


async def stream_run(client: httpx.AsyncClient, agent: str, text: str) -> list[SSEvent]:
    body = {"agent": agent, "input": text}
    async with client.stream("POST", "/agent/stream", json=body) as response:
        assert response.status_code == 200
        return await collect(response)


async def attach(
    client: httpx.AsyncClient, job: str, *, last: int | None = None, **params: str
) -> list[SSEvent]:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    url = f"/agent/stream/{job}"
    async with client.stream("GET", url, headers=headers, params=params) as response:
        assert response.status_code == 200, await response.aread()
        return await collect(response)


def ids(events: list[SSEvent]) -> list[int]:
    return [e.seq for e in events]


async def test_stream_sends_every_event_in_order_with_proxy_safe_headers(server: Server) -> None:
    body = {"agent": "assistant", "input": "What is 17*23?"}
    async with server.client.stream("POST", "/agent/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        everything = [e async for e in parse(response)]
    assert everything[0].retry is not None
    assert everything[0].retry > 0
    events = [e for e in everything if e.id is not None]
    job = response.headers["x-job-id"]

    assert ids(events) == list(range(len(events)))
    types = [e.event for e in events]
    assert types[0] == "run.started"
    assert types[-1] == "run.completed"
    assert types.count("tool.call") == types.count("tool.result") == 1
    for e in events:
        data = e.json()
        assert (data["job_id"], data["seq"], data["type"]) == (job, e.seq, e.event)
    deltas = "".join(str(e.json()["text"]) for e in events if e.event == "llm.delta")
    assert deltas == "The result is 391."
    assert events[-1].json()["result"] == {"output": "The result is 391."}


async def test_attach_replays_the_run_and_resumes_after_every_event_id(server: Server) -> None:
    live = await stream_run(server.client, "assistant", "What is 6*7?")
    job = str(live[0].json()["job_id"])

    replay = await attach(server.client, job)
    assert [(e.id, e.event, e.json()) for e in replay] == [(e.id, e.event, e.json()) for e in live]
    last = live[-1].seq
    for after in range(-1, last):
        resumed = await attach(server.client, job, last=after)
        assert ids(resumed) == list(range(after + 1, last + 1)), after
    # After the last event of an ended run: 204, which stops an EventSource reconnecting.
    ended = await server.client.get(f"/agent/stream/{job}", headers={"Last-Event-ID": str(last)})
    assert ended.status_code == 204


async def test_submitted_job_streams_live_to_a_browser_token(server: Server) -> None:
    submitted = await server.client.post(
        "/agent/submit", json={"agent": "worker-agent", "input": "nap 0.3; calc 2+3"}
    )
    stream_url = submitted.json()["stream_url"]
    status = (await server.client.get(submitted.json()["status_url"])).json()
    assert status["stream_url"].startswith(f"{server.base_url}/agent/stream/")

    # No Authorization header, as from an EventSource: the token alone opens this stream.
    async with httpx.AsyncClient(timeout=20) as browser:
        async with browser.stream("GET", stream_url) as response:
            assert response.status_code == 200
            events = await collect(response)
    assert [e.event for e in events if e.event in ("tool.call", "tool.result")] == [
        "tool.call",
        "tool.result",
        "tool.call",
        "tool.result",
    ]
    assert events[-1].event == "run.completed"
    assert ids(events) == list(range(len(events)))


async def test_stream_access_is_the_runs_owner_or_its_token(server: Server) -> None:
    live = await stream_run(server.client, "assistant", "What is 1+1?")
    job = str(live[0].json()["job_id"])
    other = str((await stream_run(server.client, "assistant", "What is 2+2?"))[0].json()["job_id"])
    token = (await server.client.get(f"/agent/status/{job}")).json()["stream_url"].split("=")[-1]

    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        missing = await anonymous.get(f"/agent/stream/{job}")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await anonymous.get(f"/agent/stream/{other}?token={token}")).status_code == 401
        assert (await anonymous.get(f"/agent/stream/{job}?token=forged.sig")).status_code == 401
        # The token reads the stream and nothing else.
        assert (await anonymous.get(f"/agent/status/{job}?token={token}")).status_code == 401
        assert len(await attach(anonymous, job, token=token)) == len(live)
        await asyncio.sleep(2.1)
        assert (await anonymous.get(f"/agent/stream/{job}?token={token}")).status_code == 401
    not_hers = await server.client.get(f"/agent/stream/{job}", headers=BOB)
    assert not_hers.status_code == 404
    for bad in (b"x", b"3_0", b"-2", b"2147483648", "\u0663".encode()):
        bad_id = await server.client.get(f"/agent/stream/{job}", headers={b"Last-Event-ID": bad})
        assert bad_id.status_code == 422, bad


async def test_a_stream_ends_when_its_run_is_deleted(server: Server, db_url: str) -> None:
    submitted = await server.client.post(
        "/agent/submit", json={"agent": "assistant", "input": "delete the file big.txt"}
    )
    job = submitted.json()["job_id"]
    async with server.client.stream("GET", f"/agent/stream/{job}") as response:
        events = parse(response)
        async for event in events:
            if event.event == "approval.required":
                break
        # Gone with its session, say, without a terminal event the stream could have seen.
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            await conn.execute(delete(runs).where(runs.c.id == uuid.UUID(job)))
        await engine.dispose()
        async with asyncio.timeout(15):
            rest = [event async for event in events]
    assert [e.event for e in rest if e.event in TERMINAL] == []


async def test_a_resume_past_the_last_event_ends_with_the_run(server: Server) -> None:
    body = {"agent": "worker-agent", "input": "nap 1; say done"}
    submitted = await server.client.post("/agent/submit", json=body)
    job = submitted.json()["job_id"]
    async with asyncio.timeout(15):
        # The client claims events the run never had: the stream still ends when it does.
        events = await attach(server.client, job, last=50)
    assert events == []
    assert (await server.client.get(f"/agent/status/{job}")).json()["status"] == "completed"


async def test_disconnecting_does_not_stop_the_run(server: Server) -> None:
    body = {"agent": "worker-agent", "input": "nap 0.5; say still here"}
    async with server.client.stream("POST", "/agent/stream", json=body) as response:
        async for event in parse(response):
            if event.event == "run.started":
                job = str(event.json()["job_id"])
                break
    for _ in range(100):
        status = (await server.client.get(f"/agent/status/{job}")).json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "completed"
    assert status["result"] == {"output": "still here"}


async def test_cancel_ends_the_stream_with_run_cancelled(server: Server) -> None:
    body = {"agent": "worker-agent", "input": "nap 1.5; nap 1.5"}
    seen: list[SSEvent] = []
    async with server.client.stream("POST", "/agent/stream", json=body) as response:
        async for event in parse(response):
            if event.id is None:
                continue
            seen.append(event)
            if event.event == "tool.call":
                job = str(event.json()["job_id"])
                cancelled = await server.client.post(f"/agent/cancel/{job}")
                assert cancelled.status_code == 200
    assert seen[-1].event == "run.cancelled"
    assert ids(seen) == list(range(len(seen)))


async def test_text_streams_as_it_is_generated(server: Server) -> None:
    events = await stream_run(server.client, "worker-agent", "pace 0.1; say one two three four")
    deltas = [e for e in events if e.event == "llm.delta"]
    assert "".join(str(d.json()["text"]) for d in deltas) == "one two three four"
    # The words reached the client as they were generated (the output filter holds back
    # at most the word it cannot judge yet).
    assert len(deltas) >= 3
    assert deltas[-1].at - deltas[0].at >= 0.2
    assert events[-1].event in TERMINAL


async def test_session_message_streams_with_stream_true(server: Server) -> None:
    session = (await server.client.post("/agent/sessions", json={"agent": "assistant"})).json()
    url = f"/agent/sessions/{session['session_id']}/messages"
    async with server.client.stream(
        "POST", url, json={"input": "What is 17*23?", "stream": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await collect(response)
    assert events[0].event == "run.started"
    assert "llm.delta" in [e.event for e in events]
    assert events[-1].json()["result"] == {"output": "The result is 391."}
    log = (await server.client.get(f"/agent/sessions/{session['session_id']}")).json()
    assert log["messages"][-1]["content"] == "The result is 391."
    assert log["messages"][-1]["run_id"] == events[0].json()["job_id"]


async def test_a_client_that_stops_reading_is_cut_off_and_the_run_goes_on(
    make_settings: SettingsFactory, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # ~8 MB of events: more than the kernel buffers between server and client can hold.
    words = " ".join(f"w{i:05d}" for i in range(28_000))
    async with serve_app(script_app()) as model_url:
        settings = make_settings(
            agents_module="tests.support.custom_agents",
            openai_base_url=f"{model_url}/v1",
            stream_send_timeout_s=0.5,
        )
        async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
            async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=30) as client:
                body = {"agent": "worker-agent", "input": f"chunk 3; say {words}"}
                async with client.stream("POST", "/agent/stream", json=body) as response:
                    job = response.headers["x-job-id"]
                    full = (await response.aread()).count(b"\nid: ")
                host, port = base.removeprefix("http://").split(":")
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
                reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
                writer.write(
                    f"GET /agent/stream/{job} HTTP/1.1\r\nHost: t\r\n"
                    f"Authorization: {ALICE['Authorization']}\r\n\r\n".encode()
                )
                await writer.drain()
                reader._transport.pause_reading()  # type: ignore[attr-defined]
                await asyncio.sleep(3)  # a client that stopped reading
                reader._transport.resume_reading()  # type: ignore[attr-defined]
                async with asyncio.timeout(10):
                    received = await reader.read()  # until the server closed it
                writer.close()
                await writer.wait_closed()
                # Cut off before the end (a finished stream would keep the connection open).
                assert received.count(b"\nid: ") < full
                assert b"event: run.completed" not in received
                resumed = await attach(client, job, last=10)
                assert resumed[0].seq == 11
                assert resumed[-1].event == "run.completed"
    # Cut off on purpose: our info line says so, and uvicorn logs no error about it.
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("app.api.sse", logging.INFO, CUT_OFF_LINE) in messages
    assert [m for m in messages if m[1] >= logging.ERROR] == []


async def test_a_stream_ends_at_its_lifetime_and_resumes_where_it_stopped(
    make_settings: SettingsFactory,
) -> None:
    async with serve_app(script_app()) as model_url:
        settings = make_settings(
            agents_module="tests.support.custom_agents",
            openai_base_url=f"{model_url}/v1",
            stream_max_s=0.5,
        )
        async with LifespanManager(create_app(settings)) as manager, serve_app(manager.app) as base:
            async with httpx.AsyncClient(base_url=base, headers=ALICE, timeout=20) as client:
                first = await stream_run(client, "worker-agent", "nap 1.5; say done")
                assert first[-1].event not in TERMINAL  # cut by the lifetime cap
                job = str(first[0].json()["job_id"])
                seen = list(first)
                for _ in range(20):  # reconnect as EventSource would, from the last id
                    seen += await attach(client, job, last=seen[-1].seq)
                    if seen[-1].event in TERMINAL:
                        break
    assert ids(seen) == list(range(len(seen)))
    assert seen[-1].event == "run.completed"
