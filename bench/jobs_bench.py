"""Jobs completed per second and submit-to-start latency with `agentsvc worker` processes.

    .venv/bin/python -m bench.jobs_bench                  # 1 and 4 workers, table only
    .venv/bin/python -m bench.jobs_bench --write          # and update BENCHMARKS.md
    .venv/bin/python -m bench.jobs_bench --workers 2 --concurrency 32 --rates 100

One run: a fresh PostgreSQL database (migrated with `agentsvc migrate`), the fake
model of `bench.llm_server` (answers at once with text: one LLM call per job) and
`agentsvc serve` with AGENTSVC_EMBEDDED_WORKERS=0. Baselines on the same machine in
the same run: the bare FastAPI app and agentsvc's sync `POST /agent` under wrk. Then
for each number of workers K, K `agentsvc worker` processes and three phases:

- latency: paced submissions at each `--rates` (open loop, no backlog); delays from
  the runs table (`started_at - created_at`, `finished_at - created_at`);
- throughput: wrk submits as fast as it can (up to `--jobs` or `--submit-s`) while the
  workers drain the queue; completed runs / (last finished_at - first created_at);
- drain: the workers are paused (SIGSTOP), wrk fills the queue with `--backlog` jobs
  through the API alone (the API's submit rate), the workers are resumed and drain it.

Each phase waits (bounded) until every run ended. At the end every run must be
completed with exactly one llm_calls row and three run_events rows, and the fake
model must have answered one completion per run. Every child process and the
database are removed at the end, also on Ctrl-C or SIGTERM. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import harness, jobs_report, pg, procs, report, servers
from bench.harness import Harness
from bench.jobs_phases import Phases
from bench.jobs_report import Checks, Results
from bench.procs import BenchError

ROOT = Path(__file__).resolve().parent.parent


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--workers", type=_ints, default=[1, 4], help="comma list of K")
    p.add_argument("--concurrency", type=int, default=16, help="AGENTSVC_WORKER_CONCURRENCY")
    p.add_argument("--pool-size", type=int, help="AGENTSVC_DB_POOL_SIZE of every process")
    p.add_argument("--rates", type=_ints, default=[50, 200], help="paced jobs/s, comma list")
    p.add_argument("--paced-s", type=float, default=15.0, help="measured seconds per rate")
    p.add_argument("--paced-warmup", type=float, default=3.0, help="unmeasured seconds before")
    p.add_argument("--jobs", type=int, default=10_000, help="throughput phase: most jobs")
    p.add_argument("--submit-s", type=float, default=20.0, help="…and most seconds of submits")
    p.add_argument("--backlog", type=int, default=5_000, help="drain phase jobs (0: skip)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--baseline-s", type=float, default=10.0, help="measured s per baseline")
    p.add_argument("--baseline-warmup", type=float, default=3.0)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="most seconds to drain")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between queue samples")
    p.add_argument("--log-level", default="warning", help="agentsvc and uvicorn log level")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--app-dir", type=Path, default=ROOT, help="where the `app` package is")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy into this folder: the API filling, worker 0 paced"
        " and draining (raw collapsed stacks; py-spy's CPU then counts as other work)",
    )
    p.add_argument("--profile-s", type=float, default=8.0, help="seconds per profile")
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not harness.loopback_postgres(args.postgres):
        p.error("--postgres must be postgresql://…@127.0.0.1:PORT (traffic stays on loopback)")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs at least one K >= 1")
    return args


def run(args: argparse.Namespace, h: Harness, results: Results) -> None:
    """Every phase, in order; the children stay up until `h.close()`."""
    h.open()
    api_env = h.agentsvc_env(log_level=args.log_level, embedded_workers=0, pool_size=args.pool_size)
    api_port = procs.free_port()
    phases = Phases(args, h, results, api_port=api_port)
    if not args.skip_baselines:
        bare_port = procs.free_port()
        options = servers.ServeOptions(log_level=args.log_level)
        bare = h.serve("bare", servers.bare_command(bare_port, options), h.env, bare_port)
        phases.baseline(jobs_report.BARE, bare, bare_port, "/agent")
        procs.stop(bare)
    api_cmd = servers.agentsvc_command(api_port, servers.ServeOptions(log_level=args.log_level))
    phases.api = h.serve("api", api_cmd, api_env, api_port)
    if not args.skip_baselines:
        phases.baseline(jobs_report.SYNC, phases.api, api_port, "/agent")
    for k in args.workers:
        phases.stage(k)
    procs.stop(phases.api)
    results.checks = verify(h)


def verify(h: Harness) -> Checks:
    """Every run completed with exactly one llm_calls row and its three events."""
    counts = pg.counts(h.postgres, h.db_name)
    completions = h.llm_completions()
    problems = counts.problems()
    if completions != counts.runs:
        problems.append(f"{completions} LLM completions for {counts.runs} runs")
    return Checks(counts=counts, llm_completions=completions, problems=problems)


def method(args: argparse.Namespace) -> str:
    body = json.dumps(servers.RUN_BODY)
    pool = "default (10)" if args.pool_size is None else args.pool_size
    return (
        "agentsvc is `agentsvc serve` (one uvicorn process) with `AGENTSVC_EMBEDDED_WORKERS=0`"
        " and K `agentsvc worker` processes, each"
        f" `AGENTSVC_WORKER_CONCURRENCY={args.concurrency}`,"
        f" log level `{args.log_level}`, `AGENTSVC_DB_POOL_SIZE` {pool} in every process,"
        " on a fresh migrated PostgreSQL database; every job is"
        f" `{body}` to the built-in `assistant` agent, whose model `openai/bench-model` is"
        " `bench/llm_server.py`, which answers at once with text: one LLM call, no tool call."
        f" *Latency*: a paced open-loop client (bench/paced.py) submits at a fixed rate for"
        f" {args.paced_warmup:g} s unmeasured, then {args.paced_s:g} s measured; start ="
        " `started_at - created_at` (stamped by the API before its INSERT and by the worker"
        " before its claim statement), finish = `finished_at - created_at`, run ="
        " `finished_at - started_at`, all from the runs table; HTTP is the answer time of"
        " `POST /agent/submit` seen by the client. *Submit while draining*: wrk, 1 thread,"
        f" {args.connections} connections, submits up to {args.jobs} jobs or for"
        f" {args.submit_s:g} s while the workers run; jobs/s = completed runs / (last"
        " `finished_at` - first `created_at`); steady = runs finished in the middle half of"
        " that window / half the window. *Drain a filled queue*: the workers are paused"
        f" (SIGSTOP) while wrk submits {args.backlog} jobs through the API alone (the"
        " `POST /agent/submit` baseline row), then resumed; jobs/s from the first `started_at`."
        " Claim batch = runs / distinct `started_at` (one per claim statement that took runs);"
        " commits and rows per job from `pg_stat_database` (the benchmark's own queries taken"
        " out); conns opened = PostgreSQL sessions opened in the phase (pool churn). CPU"
        " ms/job is the CPU each party used over the phase (until the queue was empty) per job;"
        " PostgreSQL is every `postgres` process, a lower bound (backends that exit in the phase"
        " are lost); *all busy CPU* is the CPU time all cores were busy per job, whoever used"
        " it: 2000 / that is the most jobs/s two cores allow. The baselines"
        f" are {args.baseline_warmup:g} s warm-up and {args.baseline_s:g} s of wrk with"
        f" {args.connections} connections: the bare app of `bench/bare_app.py` and agentsvc's"
        " sync `POST /agent` on the same API process (no worker running)."
    )


def report_text(r: Results) -> list[str]:
    return [
        report.aligned(jobs_report.baseline_rows(r)),
        "",
        report.aligned(jobs_report.throughput_rows(r)),
        "",
        report.aligned(jobs_report.latency_rows(r)),
        "",
        *jobs_report.target_lines(r),
        jobs_report.check_line(r.checks),
    ]


def _json_default(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    harness.exit_on_sigterm()
    h = Harness(postgres=args.postgres, app_dir=args.app_dir, name="jobs", keep_logs=args.keep_logs)
    results = Results(baselines=[], throughput=[], latency=[])
    started = time.monotonic()
    try:
        run(args, h, results)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        h.close()
    print("\n".join(["", *report_text(results)]))  # noqa: T201
    print(f"({time.monotonic() - started:.0f} s)")  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=1, default=_json_default))
    if args.write:
        section = jobs_report.markdown_section(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=harness.describe_machine(args.postgres),
            commit=harness.commit_of(args.app_dir),
            method=method(args),
            r=results,
            command=harness.reproduce("bench.jobs_bench", argv),
        )
        path = ROOT / "BENCHMARKS.md"
        report.write_section(path, section, begin=jobs_report.BEGIN, end=jobs_report.END)
        print(f"wrote {path}")  # noqa: T201
    return 1 if results.checks is None or results.checks.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
