"""`GET /agent/experiments/{agent}`: every number of the report against runs whose outcomes
the test wrote, and real runs through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient

from app.agents.policy import Experiment, Shadow, TrafficPolicy, Variant
from app.observability.stats import newcombe_difference, wilson_interval
from app.services.experiments import build_report
from app.store.db import Database, create_engine
from tests.conftest import ALICE, BOB, ROOT, SettingsFactory
from tests.fakes.llm_server import TextReply, Usage, serve_fake_openai
from tests.support.app import running_app
from tests.support.experiment_runs import Seed, seed_runs

PROBLEM = "application/problem+json"
UNTIL = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SINCE = UNTIL - timedelta(hours=2)
POLICY = TrafficPolicy(
    stable="1",
    experiment=Experiment(
        name="tone",
        # The control is listed first though "bold" comes first alphabetically.
        variants=[Variant(name="plain", version="1"), Variant(name="bold", version="2")],
    ),
    shadow=Shadow(version="4", rate=0.5),
)


def at(minute: int) -> datetime:
    return SINCE + timedelta(minutes=minute)


def run(
    minute: int,
    version: str,
    status: str,
    latency_s: float | None = None,
    turns: int = 0,
    tokens: int = 0,
    cost: float = 0.0,
    **extra: object,
) -> Seed:
    """A run created `minute` minutes into the window (`tokens` are input tokens)."""
    seed = Seed(
        version=version,
        status=status,
        created_at=at(minute),
        latency_s=latency_s,
        turns=turns,
        input_tokens=tokens,
        cost_usd=cost,
    )
    for name, value in extra.items():
        setattr(seed, name, value)
    return seed


def scenario() -> list[Seed]:
    """23 runs of `assistant` in the window, and 3 runs the report must not read."""
    p_old = run(-60, "1", "completed", 1.0, output="Paris")
    r1 = run(1, "1", "completed", 1.0, 2, 100, 0.001, output_tokens=20, tools=["ok", "ok"],
             rating="up", output="The answer is 391.")  # fmt: skip
    r2 = run(2, "1", "completed", 3.0, 1, 60, 0.0005, tools=["error"], rating="up", output="391")
    r3 = run(3, "1", "failed", 5.0, 3, 200, 0.002, error_type="timeout",
             tools=["invalid", "ok"], rating="down")  # fmt: skip
    r4 = run(4, "1", "cancelled", 0.5, 1, 10, 0.0001, tools=["refused"])
    r5 = run(5, "1", "running", None, 1, 30, 0.0003, tools=["started"])
    r6 = run(8, "2", "completed", 2.0, 1, 100, 0.002, tools=["ok"], rating="down",
             experiment="tone", variant="bold")  # fmt: skip
    r9 = run(11, "2", "failed", 8.0, 2, 100, 0.002, error_type="timeout", experiment="tone",
             variant="bold")  # fmt: skip
    return [
        p_old,
        run(0, "1", "completed", 2.0, 1, 20, 0.0002),
        r1, r2, r3, r4, r5,
        run(6, "1", "completed", 2.0, 1, 40, 0.0004, rating="up", experiment="tone",
            variant="plain"),
        run(7, "1", "completed", 4.0, 1, 40, 0.0004, experiment="tone", variant="plain"),
        r6,
        run(9, "2", "completed", 4.0, 2, 100, 0.002, experiment="tone", variant="bold"),
        run(10, "2", "failed", 6.0, 8, 800, 0.01, error_type="max_turns_exceeded",
            tools=["error", "error"], experiment="tone", variant="bold"),
        r9,
        run(12, "2", "pending", experiment="tone", variant="bold"),
        # An earlier experiment, no longer in the policy: its baseline is "a" (alphabetical).
        run(13, "3", "completed", 1.0, 1, 10, 0.0001, experiment="old", variant="b"),
        run(14, "3", "failed", 1.0, 1, 10, 0.0001, error_type="llm_unavailable",
            experiment="old", variant="a"),
        # Shadow runs of version 4, each against the live run it copied.
        run(15, "4", "completed", 1.5, 2, 100, 0.001, shadow_of=r1,
            output="  the ANSWER is\n  391. ", tools=["simulated", "ok"]),
        run(16, "4", "completed", 2.5, 1, 100, 0.001, shadow_of=r2, output="It is 392"),
        run(17, "4", "failed", 4.5, 1, 100, 0.001, shadow_of=r3, error_type="timeout"),
        run(18, "4", "completed", 1.0, 1, 100, 0.001, shadow_of=r5, output="391"),
        run(19, "4", "completed", 1.0, 1, 100, 0.001, shadow_of=r4, output="391"),
        run(20, "4", "pending", shadow_of=r6),
        run(21, "4", "completed", 2.0, 1, 100, 0.001, shadow_of=p_old, output="paris",
            tools=["ok"]),
        run(22, "4", "completed", 3.0, 1, 100, 0.001, shadow_of=r9, output="done"),
        # Not read: another agent's run, and a run created at `until` (excluded).
        run(30, "1", "completed", 1.0, agent="other"),
        run(120, "1", "completed", 1.0),
    ]  # fmt: skip


def stats(
    *,
    runs: int,
    in_flight: int,
    completed: int,
    failed: int,
    cancelled: int = 0,
    errors: dict[str, int],
    latency: tuple[int, float, float] | None,
    turns: float,
    tokens: float,
    cost_per_run: float,
    cost: float,
    tools: tuple[int, int],
    ratings: tuple[int, int] | None = None,
    success_diff: dict[str, object] | None = None,
    up_rate_diff: dict[str, object] | None = None,
) -> dict[str, object]:
    """A group's expected numbers, as `asdict(GroupStats)` has them."""
    decided = completed + failed
    n, p50, p95 = latency or (0, None, None)
    tool_calls, tool_errors = tools
    feedback = None
    if ratings is not None:
        up, down = ratings
        feedback = {
            "ratings": up + down,
            "up": up,
            "down": down,
            "up_rate": pytest.approx(up / (up + down)),
            "ci95": pytest.approx(wilson_interval(up, up + down)),
        }
    return {
        "runs": runs,
        "in_flight": in_flight,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "success_rate": pytest.approx(completed / decided),
        "success_ci95": pytest.approx(wilson_interval(completed, decided)),
        "error_types": errors,
        "latency_ms": {
            "n": n,
            "p50": p50 and pytest.approx(p50),
            "p95": p95 and pytest.approx(p95),
        },
        "turns_per_run": pytest.approx(turns),
        "tokens_per_run": pytest.approx(tokens),
        "cost_per_run_usd": pytest.approx(cost_per_run),
        "cost_usd": pytest.approx(cost),
        "tool_calls": tool_calls,
        "tool_errors": tool_errors,
        "tool_error_rate": None if tool_calls == 0 else pytest.approx(tool_errors / tool_calls),
        "feedback": feedback,
        "success_diff": success_diff,
        "up_rate_diff": up_rate_diff,
    }


def diff(baseline: str, k1: int, n1: int, k2: int, n2: int) -> dict[str, object]:
    estimate, low, high = newcombe_difference(k1, n1, k2, n2)
    return {
        "baseline": baseline,
        "estimate": pytest.approx(estimate),
        "ci95": pytest.approx((low, high)),
    }


def bold_stats(
    success_diff: dict[str, object], up_rate_diff: dict[str, object]
) -> dict[str, object]:
    """Version 2 and variant tone/bold: the same runs (r6, r9, a max-turns run, a pending one)."""
    return stats(
        runs=4,
        in_flight=1,
        completed=2,
        failed=2,
        errors={"max_turns_exceeded": 1, "timeout": 1},
        # Latencies 2, 4, 6, 8 s: p95 sits 85% of the way from 6 to 8 s.
        latency=(4, 5000.0, 7700.0),
        turns=13 / 4,
        tokens=1100 / 4,
        cost_per_run=0.016 / 4,
        cost=0.016,
        tools=(3, 2),
        ratings=(0, 1),
        success_diff=success_diff,
        up_rate_diff=up_rate_diff,
    )


def one_run(
    completed: int, failed: int, success_diff: dict[str, object] | None = None
) -> dict[str, object]:
    """Variants old/a and old/b: one run each, 1 s, 10 tokens, $0.0001."""
    return stats(
        runs=1,
        in_flight=0,
        completed=completed,
        failed=failed,
        errors={"llm_unavailable": failed} if failed else {},
        latency=(1, 1000.0, 1000.0),
        turns=1,
        tokens=10,
        cost_per_run=0.0001,
        cost=0.0001,
        tools=(0, 0),
        success_diff=success_diff,
    )


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(create_engine(db_url))
    try:
        yield database
    finally:
        await database.dispose()


async def test_every_number_of_the_report(db: Database) -> None:
    await seed_runs(db, scenario())

    report = await build_report(db, POLICY, "assistant", SINCE, UNTIL)

    assert (report.agent, report.since, report.until) == ("assistant", SINCE, UNTIL)
    assert report.policy == POLICY
    assert (report.runs_read, report.truncated, report.oldest_read) == (23, False, SINCE)

    assert [(g.version, g.baseline) for g in report.versions] == [
        ("1", True),
        ("2", False),
        ("3", False),
    ]
    v1, v2, v3 = (asdict(g.stats) for g in report.versions)
    assert v1 == stats(
        runs=7,
        in_flight=1,
        completed=5,
        failed=1,
        cancelled=1,
        errors={"timeout": 1},
        # 1, 2, 2, 3, 4, 5 s (the cancelled and the running run have no latency).
        latency=(6, 2500.0, 4750.0),
        turns=10 / 7,
        tokens=490 / 7,
        cost_per_run=0.0046 / 7,
        cost=0.0049,
        tools=(7, 2),
        ratings=(3, 1),
    )
    assert v2 == bold_stats(success_diff=diff("1", 2, 4, 5, 6), up_rate_diff=diff("1", 0, 1, 3, 4))
    assert v3 == stats(
        runs=2,
        in_flight=0,
        completed=1,
        failed=1,
        errors={"llm_unavailable": 1},
        latency=(2, 1000.0, 1000.0),
        turns=1,
        tokens=10,
        cost_per_run=0.0001,
        cost=0.0002,
        tools=(0, 0),
        success_diff=diff("1", 1, 2, 5, 6),
    )

    assert [(g.experiment, g.variant, g.versions, g.baseline) for g in report.variants] == [
        ("tone", "plain", ("1",), True),
        ("tone", "bold", ("2",), False),
        ("old", "a", ("3",), True),
        ("old", "b", ("3",), False),
    ]
    plain, bold, old_a, old_b = (asdict(g.stats) for g in report.variants)
    assert plain == stats(
        runs=2,
        in_flight=0,
        completed=2,
        failed=0,
        errors={},
        latency=(2, 3000.0, 3900.0),
        turns=1,
        tokens=40,
        cost_per_run=0.0004,
        cost=0.0008,
        tools=(0, 0),
        ratings=(1, 0),
    )
    assert bold == bold_stats(
        success_diff=diff("plain", 2, 4, 2, 2), up_rate_diff=diff("plain", 0, 1, 1, 1)
    )
    assert old_a == one_run(completed=0, failed=1)
    assert old_b == one_run(completed=1, failed=0, success_diff=diff("a", 1, 1, 0, 1))

    (shadow,) = report.shadows
    assert shadow.version == "4"
    assert asdict(shadow.stats) == stats(
        runs=7,
        in_flight=1,
        completed=6,
        failed=1,
        errors={"timeout": 1},
        # 1, 1, 1.5, 2, 2.5, 3, 4.5 s
        latency=(7, 2000.0, 4050.0),
        turns=8 / 7,
        tokens=100,
        cost_per_run=0.001,
        cost=0.007,
        tools=(3, 0),
    )
    # Pairs: r1 (same output after folding), r2 (other output), r3 (same error type), the
    # cancelled r4 (paired, not compared), the primary older than the window (same output),
    # r9 (failed; its shadow completed). Not paired: the running r5's, the pending shadow.
    assert asdict(shadow.pairs) == {
        "pairs": 6,
        "matching": 3,
        "match_rate": 0.5,
        "match_ci95": pytest.approx(wilson_interval(3, 6)),
        "compared": 5,
        "success_diff": diff("primary", 4, 5, 3, 5),
    }


async def test_the_row_cap_reads_the_newest_runs_and_says_so(db: Database) -> None:
    await seed_runs(db, scenario())

    report = await build_report(db, POLICY, "assistant", SINCE, UNTIL, max_rows=3)

    assert (report.runs_read, report.truncated, report.oldest_read) == (3, True, at(20))
    assert (report.versions, report.variants) == ((), ())
    (shadow,) = report.shadows
    assert asdict(shadow.stats) == stats(
        runs=2,
        in_flight=1,
        completed=2,
        failed=0,
        errors={},
        latency=(2, 2500.0, 2950.0),
        turns=1,
        tokens=100,
        cost_per_run=0.001,
        cost=0.002,
        # Only the tool call of a run read: the older shadow's two are not counted.
        tools=(1, 0),
    )
    # The primaries are found though the slice holds none of them.
    assert (shadow.pairs.pairs, shadow.pairs.matching, shadow.pairs.compared) == (2, 1, 2)
    assert asdict(shadow.pairs)["success_diff"] == diff("primary", 2, 2, 1, 2)


async def test_the_report_counts_runs_made_through_the_api(
    make_settings: SettingsFactory,
) -> None:
    async with running_app(make_settings()) as client:
        runs = []
        for _ in range(3):
            response = await client.post(
                "/agent", json={"agent": "assistant", "input": "What is 17*23?"}, headers=ALICE
            )
            assert response.status_code == 200, response.text
            runs.append(response.json())
        rated = await client.post(
            f"/agent/runs/{runs[0]['job_id']}/feedback", json={"rating": "up"}, headers=ALICE
        )
        assert rated.status_code == 201, rated.text

        response = await client.get("/agent/experiments/assistant", headers=ROOT)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"] == "assistant"
    assert body["policy"]["stable"] == "1"
    assert (body["runs_read"], body["truncated"]) == (3, False)
    assert (body["variants"], body["shadows"]) == ([], [])
    (group,) = body["versions"]
    usages = [r["usage"] for r in runs]
    tokens = [u["input_tokens"] + u["output_tokens"] for u in usages]
    assert group["version"] == "1"
    assert group["baseline"] is True
    assert (group["runs"], group["in_flight"], group["completed"], group["failed"]) == (3, 0, 3, 0)
    assert group["success_rate"] == 1.0
    assert group["success_ci95"] == [round(wilson_interval(3, 3)[0], 4), 1.0]
    assert group["error_types"] == {}
    assert group["latency_ms"]["n"] == 3
    assert 0 < group["latency_ms"]["p50"] <= group["latency_ms"]["p95"]
    assert group["turns_per_run"] == round(sum(r["turns"] for r in runs) / 3, 2)
    assert group["tokens_per_run"] == round(sum(tokens) / 3, 2)
    # The local model is free (the priced case is the next test).
    assert group["cost_usd"] == sum(u["cost_usd"] for u in usages) == 0
    assert group["cost_per_run_usd"] == 0
    # The calculator, once per run (see test_sync_api).
    assert group["tool_calls"] == sum(u["tool_calls"] for u in usages) == 3
    assert (group["tool_errors"], group["tool_error_rate"]) == (0, 0.0)
    assert group["feedback"] == {
        "ratings": 1,
        "up": 1,
        "down": 0,
        "up_rate": 1.0,
        "ci95": [round(wilson_interval(1, 1)[0], 4), 1.0],
    }
    assert (group["success_diff"], group["up_rate_diff"]) == (None, None)


async def test_the_report_costs_runs_of_a_priced_model(make_settings: SettingsFactory) -> None:
    async with serve_fake_openai() as fake:
        for _ in range(2):
            fake.enqueue(TextReply("hi", usage=Usage(input_tokens=1000, output_tokens=200)))
        settings = make_settings(default_model="openai/gpt-4o-mini", openai_base_url=fake.base_url)
        async with running_app(settings) as client:
            for _ in range(2):
                response = await client.post(
                    "/agent", json={"agent": "assistant", "input": "hi"}, headers=ALICE
                )
                assert response.json()["status"] == "completed", response.text
            body = (await client.get("/agent/experiments/assistant", headers=ROOT)).json()

    (group,) = body["versions"]
    assert (group["runs"], group["completed"], group["turns_per_run"]) == (2, 2, 1.0)
    assert group["tokens_per_run"] == 1200
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output: 0.00015 + 0.00012 per run.
    assert group["cost_per_run_usd"] == pytest.approx(0.00027)
    assert group["cost_usd"] == pytest.approx(0.00054)
    assert (group["tool_calls"], group["tool_error_rate"], group["feedback"]) == (0, None, None)


async def test_the_window_defaults_to_the_last_day_and_excludes_older_runs(
    make_settings: SettingsFactory, db: Database
) -> None:
    now = datetime.now(UTC)
    old = Seed(version="1", status="completed", created_at=now - timedelta(hours=25))
    recent = Seed(version="1", status="failed", created_at=now - timedelta(hours=1))
    recent.error_type = "timeout"
    await seed_runs(db, [old, recent])
    async with running_app(make_settings()) as client:
        last_day = (await client.get("/agent/experiments/assistant", headers=ROOT)).json()
        two_days = (
            await client.get(
                "/agent/experiments/assistant",
                params={"since": (now - timedelta(days=2)).isoformat()},
                headers=ROOT,
            )
        ).json()

    assert [(g["completed"], g["failed"]) for g in last_day["versions"]] == [(0, 1)]
    assert last_day["versions"][0]["error_types"] == {"timeout": 1}
    assert [(g["completed"], g["failed"]) for g in two_days["versions"]] == [(1, 1)]


async def test_only_admins_read_reports_of_known_agents_over_sane_windows(
    client: AsyncClient,
) -> None:
    url = "/agent/experiments/assistant"
    forbidden = await client.get(url, headers=BOB)
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == PROBLEM
    assert forbidden.json()["type"] == "forbidden"
    assert (await client.get(url)).status_code == 401

    unknown = await client.get("/agent/experiments/nobody", headers=ROOT)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM

    for params, detail in [
        ({"since": "2025-06-02T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "before until"),
        ({"since": "2025-06-01T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "before until"),
        ({"since": "2025-01-01T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "90 days"),
        ({"since": "2025-06-01T00:00:00"}, "timezone"),
        ({"until": "yesterday"}, "datetime"),
    ]:
        bad = await client.get(url, params=params, headers=ROOT)
        assert bad.status_code == 422, params
        assert bad.headers["content-type"] == PROBLEM
        assert detail in bad.json()["detail"], bad.json()

    exactly_90_days = {"since": "2025-03-03T00:00:00Z", "until": "2025-06-01T00:00:00Z"}
    assert (await client.get(url, params=exactly_90_days, headers=ROOT)).status_code == 200
