"""A real headless Chromium reads a run's events with `EventSource`, authorized only by the
token in the run's `stream_url` (a browser cannot send an Authorization header)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import httpx
import orjson
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from app.main import create_app
from tests.conftest import ALICE, SettingsFactory
from tests.fakes.loopback import serve_app

# The page the browser opens: it follows the stream and posts what it saw back.
PAGE = """<!doctype html>
<html><body><script>
const url = new URLSearchParams(location.search).get("stream");
const seen = [];
const source = new EventSource(url);
const types = ["run.started", "llm.delta", "llm.call", "tool.call", "tool.result",
               "run.completed", "run.failed", "run.cancelled"];
for (const type of types) {
  source.addEventListener(type, (e) => {
    seen.push({id: e.lastEventId, type: e.type, data: JSON.parse(e.data)});
    if (type === "run.completed" || type === "run.failed" || type === "run.cancelled") {
      source.close();
      fetch("/test/report", {method: "POST", body: JSON.stringify(seen)});
    }
  });
}
source.onerror = () => fetch("/test/report", {method: "POST", body: JSON.stringify(
  [{error: true, state: source.readyState}, ...seen])});
</script></body></html>
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is needed: scripts/test installs Debian's chromium package"
    return found


def with_test_page(app: FastAPI, reports: asyncio.Queue[object]) -> FastAPI:
    """The service plus the page and a route where the page reports back (same origin)."""

    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def report(request: Request) -> dict[str, str]:
        await reports.put(orjson.loads(await request.body()))
        return {"ok": "yes"}

    app.add_api_route("/test/page", page, methods=["GET"])
    app.add_api_route("/test/report", report, methods=["POST"])
    return app


async def test_eventsource_in_chromium_receives_every_event(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    reports: asyncio.Queue[object] = asyncio.Queue()
    app = with_test_page(create_app(make_settings()), reports)
    async with LifespanManager(app) as manager, serve_app(manager.app) as base:
        async with httpx.AsyncClient(base_url=base, headers=ALICE) as client:
            submitted = await client.post(
                "/agent/submit", json={"agent": "assistant", "input": "What is 17*23?"}
            )
            stream_url = submitted.json()["stream_url"]
            page = httpx.URL(f"{base}/test/page", params={"stream": stream_url})
            browser = await asyncio.create_subprocess_exec(
                chromium(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                str(page),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                async with asyncio.timeout(60):
                    seen = await reports.get()
            finally:
                with contextlib.suppress(ProcessLookupError):
                    browser.kill()
                await browser.wait()
            run = (await client.get(f"/agent/status/{submitted.json()['job_id']}")).json()

    assert isinstance(seen, list)
    assert not any("error" in e for e in seen), seen
    assert [int(e["id"]) for e in seen] == list(range(len(seen)))
    types = [e["type"] for e in seen]
    assert types[0] == "run.started"
    assert "tool.result" in types
    assert types[-1] == "run.completed"
    assert seen[-1]["data"]["result"] == {"output": "The result is 391."}
    assert run["status"] == "completed"
