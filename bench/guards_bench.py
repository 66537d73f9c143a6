"""What the guards around every LLM call cost: the bare provider against the same provider
behind `RunExecutor.model_for` (prompt cache → budget → fallback chain → breaker → retries),
with Redis and with the in-process stand-ins.

    .venv/bin/python -m bench.guards_bench                  # 5,000 calls per series, ~1 min
    .venv/bin/python -m bench.guards_bench --write          # and update BENCHMARKS.md
    .venv/bin/python -m bench.guards_bench --profile /tmp/guards   # cProfile, per configuration

One process, one event loop, no HTTP: the services of `app.lifespan.open_services` on a
temporary SQLite database (migrated with `app.store.migrate.upgrade`), the offline `local`
provider as the model (answers by rule, in microseconds, so the guards are not drowned by the
model). With Redis (`--redis-url`, database 15 by default, flushed at the start and the end)
and without. The user has a budget of their own (an override), the requests have temperature
0 (so the prompt cache looks up every one) and carry the `assistant` agent's instructions
and six tool schemas, as a run's first call does. Series taking turns in batches: the
provider alone, then one guard added per series, up to all of them; on the cache-hit path the
provider and all guards with one repeated request. Redis commands and database statements
are counted per kind of call. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from app.jobs.executor import RunExecutor
from app.jobs.runtime import build_spec
from app.lifespan import open_services
from app.llm.cache import cache_scope
from app.llm.types import LLMRequest, ToolSpec
from app.services.budgets import set_override
from app.settings import Settings
from app.store.migrate import upgrade
from bench import guards_parts, harness, report
from bench.guards_calls import (
    DbStatements,
    Series,
    call_once,
    measure,
    profile,
    redis_traffic,
)
from bench.guards_clients import PROMPT, USER, bench_request, build_series
from bench.guards_report import (
    BEGIN,
    END,
    METHOD,
    ConfigResult,
    machine_line,
    markdown_section,
    summary,
)
from bench.procs import CpuMeter

ROOT = Path(__file__).resolve().parent.parent
USER_BUDGET = 10**12
"""The user's own budget (an override): large enough never to refuse a call."""
AGENT = "assistant"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=5000, help="measured calls per series")
    p.add_argument("--warmup", type=int, default=500, help="unmeasured calls per series first")
    p.add_argument("--batch", type=int, default=100, help="calls per turn of a series")
    p.add_argument("--count-calls", type=int, default=200, help="calls whose Redis use is counted")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="flushed!")
    p.add_argument("--skip-redis", action="store_true", help="in-process stand-ins only")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--profile", type=Path, help="directory for cProfile output")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = p.parse_args(argv)
    if not args.redis_url.startswith("redis://127.0.0.1:"):
        p.error("--redis-url must be redis://127.0.0.1:PORT/DB (it is flushed)")
    return args


def _settings(redis_url: str | None, tmp: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite+aiosqlite:///{tmp / 'guards.db'}",
            "redis_url": redis_url,
            "sandbox_dir": tmp / "sandbox",
            "embedded_workers": 0,
            "log_level": "warning",
        }
    )


async def run_config(
    name: str, redis_url: str | None, tmp: Path, args: argparse.Namespace, *, parts: bool
) -> ConfigResult:
    """Measure one configuration of the guards; `parts`: also time the pieces of CPU work."""
    settings = _settings(redis_url, tmp)
    async with open_services(settings, worker_capacity=0) as services:
        executor = services.executor
        rt = executor.rt
        redis_pids: list[int] = []
        redis_version = None
        if rt.redis is not None:
            await rt.redis.flushdb()
            info = await rt.redis.info("server")
            redis_pids.append(int(info["process_id"]))
            redis_version = str(info["redis_version"])
        await set_override(rt.db, USER, USER_BUDGET, by="guards-bench")
        _, version = rt.registry.resolve(AGENT)
        spec = build_spec(
            rt,
            run_id="00000000-0000-4000-8000-000000000000",
            agent=AGENT,
            version=version,
            model_ref=version.model or settings.default_model,
            max_turns=version.max_turns,
            timeout_s=version.timeout_s,
        )
        tools = tuple(
            ToolSpec(name=t.name, description=t.description, parameters=t.json_schema())
            for tool in sorted(version.tools)
            if (t := rt.registry.tools.get(tool)) is not None
        )

        def make(text: str) -> LLMRequest:
            return bench_request(f"{name}: {text}", tools, version.instructions)

        count = args.warmup + args.calls
        miss, hit_bare, hit = build_series(executor, spec, settings, make, count)
        result = ConfigResult(
            name=name,
            layers=miss,
            hit_bare=hit_bare,
            hit_guarded=hit,
            redis_version=redis_version,
            request_bytes=len(hit.requests[0].model_dump_json(exclude_none=True)),
            breaker_trust_s=executor.resilience.breakers.trust_closed_s,
        )
        db = DbStatements(rt.db.engine)
        meter = CpuMeter({"bench": lambda: [os.getpid()], "redis": lambda: redis_pids})
        meter.start()
        series = [*miss, hit_bare, hit]
        await measure(series, warmup=args.warmup, calls=args.calls, batch=args.batch, db=db)
        result.cpu = meter.stop()
        result.db_statements = {k: v for k, v in db.counts.items() if v}
        result.db_texts = dict(db.texts)
        guarded = miss[-1].client
        counted = Series(
            name="counted",
            client=guarded,
            requests=[make(f"{PROMPT} Counted call {i}.") for i in range(args.count_calls)],
            budgeted=True,
        )
        counted_hits = Series(
            name="counted hits",
            client=guarded,
            requests=[hit.requests[0]] * args.count_calls,
            budgeted=True,
            hits=True,
        )
        if rt.redis is not None:
            for path, s in (("cache miss", counted), ("cache hit", counted_hits)):
                result.traffic[path] = await redis_traffic(
                    rt.redis, args.count_calls, functools.partial(call_once, s)
                )
            result.parts.append(await guards_parts.redis_round_trip(rt.redis, args.calls))
        result.problems = await _check(
            executor, [*series, counted, counted_hits], result.db_statements
        )
        if parts:
            scope = cache_scope(version, agent=AGENT, user_id=USER, default_ttl_s=3600.0)
            assert scope is not None
            result.parts[:0] = guards_parts.cpu_parts(
                hit.requests[0],
                hit_bare.responses[0],
                scope=scope,
                redactor=spec.redactor,
                tools=spec.tools,
                calls=args.calls,
            )
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            fresh = [make(f"{PROMPT} Profiled call {i}.") for i in range(args.calls)]
            path = args.profile / f"guards-{name.replace(' ', '-')}.pstats"
            top = await profile(guarded, fresh, path)
            print(f"cProfile, {args.calls} guarded cache-miss calls ({name}): {path}\n{top}")  # noqa: T201
        if rt.redis is not None:
            await rt.redis.flushdb()
    return result


async def _check(
    executor: RunExecutor, series: list[Series], db_statements: dict[str, int]
) -> list[str]:
    """Every call took the path it was meant to, and the budget saw every one."""
    problems = []
    for s in series:
        hits = sum(r.cache_hit for r in s.responses)
        want = len(s.responses) if s.hits else 0
        if hits != want:
            problems.append(f"{s.name}: {hits} cache hits of {len(s.responses)} calls")
    report_ = await executor.budgets.usage(USER)
    settled = sum(s.settled_tokens for s in series)
    usage = report_.usage
    if usage.used_tokens != settled or usage.reserved_tokens != 0:
        problems.append(
            f"budget: {usage.used_tokens} tokens used, {usage.reserved_tokens} still reserved;"
            f" the calls settled {settled} (a budget script answered later than"
            " AGENTSVC_REDIS_TIMEOUT_S, see BENCHMARKS.md)"
        )
    budgeted = {s.name for s in series if s.budgeted}
    touched = [name for name in db_statements if name not in budgeted]
    if touched:
        problems.append(f"database statements in series without the budget: {touched}")
    return problems


async def run(args: argparse.Namespace) -> list[ConfigResult]:
    with tempfile.TemporaryDirectory(prefix="agentsvc-guards-") as tmp:
        upgrade(f"sqlite+aiosqlite:///{Path(tmp) / 'guards.db'}")
        configs = [] if args.skip_redis else [("Redis", args.redis_url)]
        configs.append(("in-process", None))
        results = []
        for i, (name, url) in enumerate(configs):
            print(f"measuring: {name} …", file=sys.stderr)  # noqa: T201
            results.append(await run_config(name, url, Path(tmp), args, parts=i == 0))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    harness.exit_on_sigterm()
    factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(run(args))
    parts = [p for r in results for p in r.parts]
    redis_version = next((r.redis_version for r in results if r.redis_version), None)
    section = markdown_section(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        commit=harness.commit_of(ROOT),
        machine=machine_line(args.loop, redis_version),
        method=METHOD.format(
            warmup=args.warmup,
            calls=args.calls,
            batch=args.batch,
            redis_url=args.redis_url,
            request_bytes=results[0].request_bytes,
            trust_s=max(r.breaker_trust_s for r in results),
        ),
        results=results,
        parts=parts,
        command=harness.reproduce("bench.guards_bench", sys.argv[1:] if argv is None else argv),
    )
    print(section)  # noqa: T201
    if args.json is not None:
        args.json.write_text(json.dumps(summary(results), indent=2))
    if args.write:
        report.write_section(ROOT / "BENCHMARKS.md", section, begin=BEGIN, end=END)
        print("BENCHMARKS.md updated", file=sys.stderr)  # noqa: T201
    if any(r.problems for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
