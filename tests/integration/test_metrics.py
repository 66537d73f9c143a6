"""`GET /metrics` after real runs, on SQLite and PostgreSQL: every count, label and sum is
checked against the runs the test made (their Run answers and traces). Then real
processes: `agentsvc serve --processes 2` and an `agentsvc worker` sharing one metrics
directory add up, and a killed process's live gauges disappear.

The registry of this test process is shared by every in-process app, so in-process tests
compare a scrape before with one after."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
from httpx import AsyncClient

from app.observability.multiprocess import MetricsSetupError
from tests.conftest import ALICE, API_KEYS, TABLES, SettingsFactory, pg_execute
from tests.fakes.llm_server import (
    ErrorReply,
    HangReply,
    TextReply,
    ToolCallReply,
    serve_fake_openai,
)
from tests.fakes.loopback import serve_app
from tests.fakes.script_server import script_app
from tests.fakes.webhook_receiver import serve_receiver
from tests.integration.test_cli import free_port
from tests.integration.test_webhooks_api import SECRET
from tests.support.app import running_app
from tests.support.metrics import Delta, Scrape, scrape
from tests.support.polling import until
from tests.support.sse import collect

ROOT = Path(__file__).resolve().parents[2]
METRICS_REDIS = "redis://127.0.0.1:6379/14"
CUSTOM = "tests.support.custom_agents"
AGENT = "worker-agent"
MODEL = {"provider": "openai", "model": "gpt-4o-mini"}


async def run_sync(client: AsyncClient, text: str, agent: str = AGENT) -> dict[str, object]:
    response = await client.post("/agent", json={"agent": agent, "input": text}, headers=ALICE)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def run_stream(client: AsyncClient, text: str) -> str:
    body = {"agent": AGENT, "input": text}
    async with client.stream("POST", "/agent/stream", json=body, headers=ALICE) as response:
        assert response.status_code == 200
        events = await collect(response)
    assert events[-1].event == "run.completed"
    return str(events[-1].json()["job_id"])


async def status(client: AsyncClient, job: str) -> dict[str, object]:
    body: dict[str, object] = (await client.get(f"/agent/status/{job}", headers=ALICE)).json()
    return body


async def trace(client: AsyncClient, job: object) -> dict[str, list[dict[str, object]]]:
    body: dict[str, list[dict[str, object]]] = (
        await client.get(f"/agent/runs/{job}/trace", headers=ALICE)
    ).json()
    return body


@asynccontextmanager
async def scripted(settings: SettingsFactory, **overrides: object) -> AsyncIterator[AsyncClient]:
    """An app whose `worker-agent` talks to the scripted model (openai/gpt-4o-mini)."""
    async with serve_app(script_app()) as model:
        values: dict[str, object] = {
            "agents_module": CUSTOM,
            "openai_base_url": f"{model}/v1",
            "poll_interval_s": 0.05,
        }
        async with running_app(settings(**values | overrides)) as client:
            yield client


@pytest.fixture(params=["in-process", "redis"])
def redis_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The guards around LLM calls with their in-process stand-ins, and with real Redis."""
    if request.param == "in-process":
        yield None
        return

    async def flush() -> None:
        client = redis.Redis.from_url(METRICS_REDIS)
        await client.flushdb()
        await client.aclose()

    asyncio.run(flush())
    yield METRICS_REDIS


async def test_runs_and_their_calls_are_counted_as_their_traces_show(
    make_settings: SettingsFactory, redis_url: str | None
) -> None:
    async with scripted(make_settings, redis_url=redis_url) as client:
        before = await scrape(client)
        runs = [
            await run_sync(client, "calc 6*7"),
            await run_sync(client, "calc 1+1; calc 2+2"),
            await status(client, await run_stream(client, "say hello metrics")),
        ]
        after = await scrape(client)
        traces = [await trace(client, r["job_id"]) for r in runs]
    delta = Delta(before, after)
    assert all(r["status"] == "completed" for r in runs)
    llm = [c for t in traces for c in t["llm_calls"]]
    tools = [c for t in traces for c in t["tool_calls"]]
    assert (len(llm), len(tools)) == (6, 3)

    completed = {"agent": AGENT, "status": "completed"}
    assert delta("agentsvc_runs_total", **completed, pattern="sync") == 2
    assert delta("agentsvc_runs_total", **completed, pattern="stream") == 1
    assert delta("agentsvc_run_duration_seconds_count", **completed) == 3
    assert delta("agentsvc_run_turns_count", agent=AGENT) == 3
    assert delta("agentsvc_run_turns_sum", agent=AGENT) == sum(_int(r["turns"]) for r in runs)
    costs = [_float(_usage(r)["cost_usd"]) for r in runs]
    assert sum(costs) > 0
    assert delta("agentsvc_run_cost_usd_sum", agent=AGENT) == pytest.approx(sum(costs))
    # Outside sessions every run is a session of its own.
    assert delta("agentsvc_sessions_total", agent=AGENT) == 3
    assert delta("agentsvc_session_cost_usd_sum", agent=AGENT) == pytest.approx(sum(costs))

    assert delta("agentsvc_llm_calls_total", **MODEL, outcome="ok") == 6
    for kind in ("input", "output", "cached"):
        expected = sum(_int(c[f"{kind}_tokens"]) for c in llm)
        assert delta("agentsvc_llm_tokens_total", **MODEL, kind=kind) == expected
    spent = delta("agentsvc_llm_cost_usd_total", **MODEL, agent=AGENT)
    assert spent == pytest.approx(sum(_float(c["cost_usd"]) for c in llm))
    assert spent == pytest.approx(sum(costs))
    assert delta("agentsvc_llm_latency_seconds_count", **MODEL) == 6
    waited = sum(_float(c["latency_ms"]) for c in llm) / 1000
    assert delta("agentsvc_llm_latency_seconds_sum", **MODEL) == pytest.approx(waited)
    # Only the streamed run's answer was streamed text.
    assert delta("agentsvc_llm_time_to_first_token_seconds_count", **MODEL) == 1

    assert delta("agentsvc_tool_calls_total", tool="calculator", status="ok") == 3
    assert delta("agentsvc_tool_latency_seconds_count", tool="calculator") == 3
    # One observation per committed call: 6 LLM steps and 3 tool steps.
    assert delta("agentsvc_overhead_seconds_count") == 9
    assert after.value("agentsvc_runs_in_flight") == 0
    assert "alice" not in after.text  # no per-user labels


async def test_failures_refusals_and_cancels_are_counted_by_kind(
    make_settings: SettingsFactory,
) -> None:
    async with scripted(make_settings) as client:
        before = await scrape(client)
        failing_tool = await run_sync(client, "calc 1/0")
        after = await scrape(client)
    delta = Delta(before, after)
    assert failing_tool["status"] == "completed"  # the model got the error and answered
    assert delta("agentsvc_tool_calls_total", tool="calculator", status="error") == 1
    assert delta("agentsvc_tool_latency_seconds_count", tool="calculator") == 1

    async with serve_fake_openai() as fake:
        settings = make_settings(
            default_model="openai/gpt-4o-mini", openai_base_url=fake.base_url, embedded_workers=0
        )
        async with running_app(settings) as client:
            before = await scrape(client)
            fake.enqueue(ToolCallReply("rm_everything", {"path": "/"}), TextReply("no"))
            refused = await run_sync(client, "clean up", agent="assistant")
            fake.enqueue(ErrorReply(400, "bad request"))
            failed = await run_sync(client, "fail please", agent="assistant")
            queued = await client.post(
                "/agent/submit", json={"agent": "assistant", "input": "later"}, headers=ALICE
            )
            job = queued.json()["job_id"]
            cancel = await client.post(f"/agent/cancel/{job}", headers=ALICE)
            after = await scrape(client)
    delta = Delta(before, after)
    assert refused["status"] == "completed"
    assert delta("agentsvc_tool_calls_total", tool="(not allowed)", status="refused") == 1
    assert "rm_everything" not in after.text  # model-chosen names never become labels

    assert failed["status"] == "failed"
    error = failed["error"]
    assert isinstance(error, dict)
    assert error["type"] == "llm_unavailable"
    assert delta("agentsvc_runs_total", agent="assistant", status="failed", pattern="sync") == 1
    assert delta("agentsvc_run_errors_total", agent="assistant", type="llm_unavailable") == 1
    assert delta("agentsvc_llm_calls_total", **MODEL, outcome="error") == 1

    assert cancel.json()["status"] == "cancelled"
    assert delta("agentsvc_runs_total", agent="assistant", status="cancelled", pattern="job") == 1
    assert delta("agentsvc_run_duration_seconds_count", agent="assistant", status="cancelled") == 1


async def test_a_session_counts_once_and_its_cost_accumulates(
    make_settings: SettingsFactory,
) -> None:
    async with scripted(make_settings) as client:
        before = await scrape(client)
        created = await client.post("/agent/sessions", json={"agent": AGENT}, headers=ALICE)
        session = created.json()["session_id"]
        costs = []
        for text in ("calc 1+1", "calc 2+2; calc 3+3"):
            response = await client.post(
                f"/agent/sessions/{session}/messages", json={"input": text}, headers=ALICE
            )
            assert response.json()["status"] == "completed"
            costs.append(_float(_usage(response.json())["cost_usd"]))
        after = await scrape(client)
    delta = Delta(before, after)
    assert delta("agentsvc_sessions_total", agent=AGENT) == 1
    assert delta("agentsvc_session_cost_usd_count", agent=AGENT) == 2
    # Observed after each run: what the session had cost so far.
    so_far = costs[0] + (costs[0] + costs[1])
    assert delta("agentsvc_session_cost_usd_sum", agent=AGENT) == pytest.approx(so_far)
    assert delta("agentsvc_run_cost_usd_sum", agent=AGENT) == pytest.approx(sum(costs))


async def test_queue_claims_in_flight_runs_and_webhooks(make_settings: SettingsFactory) -> None:
    async with serve_fake_openai() as fake, serve_receiver() as receiver:
        settings = make_settings(
            default_model="openai/gpt-4o-mini",
            openai_base_url=fake.base_url,
            worker_concurrency=1,
            lease_seconds=0.6,  # the worker counts the queue every 0.2 s
            poll_interval_s=0.05,
            webhook_secret=SECRET,
            webhook_allowed_hosts="127.0.0.1",
        )
        async with running_app(settings) as client:
            before = await scrape(client)
            fake.enqueue(HangReply(), TextReply("second"))
            jobs = []
            for text, hook in (("first", None), ("second", receiver.url)):
                body = {"agent": "assistant", "input": text, "webhook_url": hook}
                response = await client.post("/agent/submit", json=body, headers=ALICE)
                jobs.append(response.json()["job_id"])

            async def first_holds_the_slot() -> bool:
                now = await scrape(client)
                return (
                    now.value("agentsvc_runs_in_flight") == 1
                    and now.value("agentsvc_queue_depth") == 1
                    and now.value("agentsvc_queue_oldest_age_seconds") > 0
                )

            await until(first_holds_the_slot, "one run held and one queued")
            await client.post(f"/agent/cancel/{jobs[0]}", headers=ALICE)

            async def drained() -> bool:
                now = await scrape(client)
                return (
                    Delta(before, now)("agentsvc_webhook_deliveries_total", outcome="delivered")
                    == 1
                    and now.value("agentsvc_queue_depth") == 0
                    and now.value("agentsvc_runs_in_flight") == 0
                )

            await until(drained, "the second run to end and its webhook to be delivered")
            after = await scrape(client)
            assert (await status(client, jobs[1]))["status"] == "completed"
    delta = Delta(before, after)
    assert after.value("agentsvc_queue_oldest_age_seconds") == 0
    assert delta("agentsvc_claim_lag_seconds_count") == 2  # both first claims
    assert delta("agentsvc_llm_calls_total", **MODEL, outcome="cancelled") == 1
    assert delta("agentsvc_runs_total", agent="assistant", status="cancelled", pattern="job") == 1
    assert delta("agentsvc_runs_total", agent="assistant", status="completed", pattern="job") == 1


def _usage(run: dict[str, object]) -> dict[str, object]:
    usage = run["usage"]
    assert isinstance(usage, dict)
    return usage


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _float(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


async def test_an_app_that_cannot_share_its_metrics_refuses_to_start(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    # This process keeps its metrics in memory: a shared directory would never see them.
    with pytest.raises(MetricsSetupError, match="AGENTSVC_METRICS_DIR"):
        async with running_app(make_settings(metrics_dir=tmp_path / "metrics")):
            pass


class Host:
    """Real processes of one host sharing a metrics directory: `agentsvc serve --processes
    2` without workers and an `agentsvc worker`, over PostgreSQL."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                cwd=ROOT,
                env=self.env | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextmanager
def host(env: dict[str, str], tmp: Path) -> Iterator[Host]:
    processes = Host(env, tmp)
    try:
        yield processes
    finally:
        processes.stop()


async def scrape_url(url: str) -> Scrape:
    # A new connection each time: with several API processes, any of them may answer.
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url, headers={"Connection": "close"})
    assert response.status_code == 200
    return Scrape(response.text)


async def ready(url: str) -> None:
    async def answers() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code == 200
        except httpx.TransportError:
            return False

    await until(answers, f"{url} to answer", timeout_s=60)


@pytest.mark.postgres
async def test_processes_sharing_a_directory_add_up_and_dead_ones_drop_out(
    pg_url: str, tmp_path: Path
) -> None:
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    flusher = redis.Redis.from_url(METRICS_REDIS)
    await flusher.flushdb()
    await flusher.aclose()
    api_port, worker_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    async with serve_app(script_app()) as model:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSVC_")} | {
            "AGENTSVC_DATABASE_URL": pg_url,
            "AGENTSVC_REDIS_URL": METRICS_REDIS,
            "AGENTSVC_API_KEYS": API_KEYS,
            "AGENTSVC_OPENAI_BASE_URL": f"{model}/v1",
            "AGENTSVC_AGENTS_MODULE": CUSTOM,
            "AGENTSVC_SANDBOX_DIR": str(tmp_path / "sandbox"),
            "AGENTSVC_POLL_INTERVAL_S": "0.1",
            "AGENTSVC_LOG_LEVEL": "warning",
            "AGENTSVC_METRICS_DIR": str(tmp_path / "metrics"),
        }
        with host(env, tmp_path) as processes:
            processes.start(
                "api",
                "serve",
                "--processes",
                "2",
                AGENTSVC_PORT=str(api_port),
                AGENTSVC_EMBEDDED_WORKERS="0",
            )
            worker = processes.start("worker", "worker", AGENTSVC_METRICS_PORT=str(worker_port))
            await ready(f"{api}/readyz")
            await ready(f"http://127.0.0.1:{worker_port}/metrics")
            before = await scrape_url(f"{api}/metrics")

            async with AsyncClient(base_url=api, headers=ALICE, timeout=30) as client:
                for _ in range(4):
                    response = await client.post(
                        "/agent",
                        json={"agent": AGENT, "input": "calc 2+2"},
                        headers={"Connection": "close"},
                    )
                    assert response.json()["status"] == "completed"
                jobs = []
                for _ in range(3):
                    response = await client.post(
                        "/agent/submit", json={"agent": AGENT, "input": "calc 3+3"}
                    )
                    jobs.append(response.json()["job_id"])

                async def jobs_done() -> bool:
                    states = [await client.get(f"/agent/status/{j}") for j in jobs]
                    return all(s.json()["status"] == "completed" for s in states)

                await until(jobs_done, "the worker to finish the jobs")
                # One more, left napping on the worker: its in-flight gauge is live.
                response = await client.post(
                    "/agent/submit", json={"agent": AGENT, "input": "nap 30"}
                )
                napping = response.json()["job_id"]

            async def napping_in_flight() -> bool:
                return (await scrape_url(f"{api}/metrics")).value("agentsvc_runs_in_flight") == 1

            await until(napping_in_flight, f"run {napping} to be in flight on the worker")
            scrapes = [await scrape_url(f"{api}/metrics") for _ in range(6)]
            from_worker = await scrape_url(f"http://127.0.0.1:{worker_port}/metrics")

            worker.kill()
            worker.wait(10)
            after_kill = await scrape_url(f"{api}/metrics")

    completed = {"agent": AGENT, "status": "completed"}
    for seen in [*scrapes, from_worker]:
        # Whichever process answers, it counts the runs of every process of the host.
        delta = Delta(before, seen)
        assert delta("agentsvc_runs_total", **completed, pattern="sync") == 4
        assert delta("agentsvc_runs_total", **completed, pattern="job") == 3
        # Two calls for each of the 7 runs, and the napping run's first.
        assert delta("agentsvc_llm_calls_total", **MODEL, outcome="ok") == 15
        assert delta("agentsvc_tool_calls_total", tool="calculator", status="ok") == 7
        assert delta("agentsvc_claim_lag_seconds_count") == 4
        assert seen.value("agentsvc_runs_in_flight") == 1
    # A killed process's live gauges drop out; what it counted stays counted.
    assert after_kill.value("agentsvc_runs_in_flight") == 0
    assert Delta(before, after_kill)("agentsvc_runs_total", **completed, pattern="job") == 3
