"""Idle SSE streams one process holds, and fan-out latency of one run's live events.

    .venv/bin/python -m bench.stream_bench                    # 10,000 streams, 1,000 subscribers
    .venv/bin/python -m bench.stream_bench --write            # and update BENCHMARKS.md
    .venv/bin/python -m bench.stream_bench --streams 500 --subscribers 100 --events 50   # quick
    .venv/bin/python -m bench.stream_bench --trace-memory     # where the memory per stream goes

One run: a fresh PostgreSQL database (migrated with `agentsvc migrate`), its own Redis
database index (flushed at the start and the end) as agentsvc's live bus, and
`agentsvc serve` (one process) with AGENTSVC_EMBEDDED_WORKERS=0, so every submitted run
stays pending and its stream stays open after the run's first event. Connections are
held by `bench.stream_client`, a separate process. Each measurement has a fresh server:

- keep-alive baseline: N connections that each did one `GET /healthz` and stay idle, on
  the same app served by uvicorn with a long keep-alive timeout (`agentsvc serve` keeps
  uvicorn's 5 s, which would close them);
- idle streams: N `GET /agent/stream/{id}`, one per pending run, each established once its
  `run.started` event (id 0) arrived. Memory = VmRSS growth / N after a settle; CPU of the
  server, PostgreSQL and Redis over an idle window;
- fan-out: a raw redis-py pub/sub round trip; then `--events` `llm.delta` events (seq 1..E)
  published at each of `--rates` per second through the app's `RedisBus` (a process of
  its own, `bench.stream_publish`) into one pending run's bus, read by
  one subscriber, then by `--subscribers`. Every subscriber must get 1..E once, in order.

Every child process, the database and the Redis index are cleaned up at the end, also on
Ctrl-C or SIGTERM. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench import harness, pg, report, stream_io, stream_report
from bench.harness import Harness
from bench.procs import BenchError
from bench.stream_client import raise_fd_limit
from bench.stream_phases import Phases
from bench.stream_report import KEEPALIVE, STREAMS, Results

ROOT = Path(__file__).resolve().parent.parent
FDS_PER_SERVER = 200
"""Files the server holds besides its connections (database pool, Redis, logs, modules)."""


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=10_000, help="idle streams (and baseline conns)")
    p.add_argument("--subscribers", type=int, default=1_000, help="fan-out subscribers of one run")
    p.add_argument("--events", type=int, default=200, help="fan-out events published")
    p.add_argument(
        "--rates", type=_floats, default=[10.0, 50.0], help="fan-out events/s, comma list"
    )
    p.add_argument("--warmup", type=int, default=100, help="connections opened and closed first")
    p.add_argument(
        "--open-parallel",
        type=int,
        default=20,
        help="connections being opened at once (200 at 10,000 streams: see BENCHMARKS.md)",
    )
    p.add_argument("--settle", type=float, default=5.0, help="seconds before RSS after opening")
    p.add_argument("--idle-s", type=float, default=10.0, help="seconds of the idle CPU window")
    p.add_argument("--skip-idle", action="store_true", help="fan-out only")
    p.add_argument("--skip-fanout", action="store_true", help="idle streams only")
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="run the streams' server under tracemalloc and print where its memory grew"
        " (its RSS figures then include tracemalloc's own cost)",
    )
    p.add_argument("--trace-frames", type=int, default=1, help="frames kept per allocation")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the server into this file while it fans out to --subscribers at the"
        " highest rate (.svg flame graph, .json speedscope, else raw collapsed stacks)",
    )
    p.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="flushed at the start")
    p.add_argument("--log-level", default="warning", help="agentsvc and uvicorn log level")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--app-dir", type=Path, default=ROOT, help="where the `app` package is")
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not harness.loopback_postgres(args.postgres):
        p.error("--postgres must be postgresql://…@127.0.0.1:PORT (traffic stays on loopback)")
    redis_url = urlsplit(args.redis)
    index = redis_url.path.strip("/")
    if redis_url.hostname != "127.0.0.1" or not index.isdigit() or index == "0":
        p.error(
            "--redis must be redis://127.0.0.1:PORT/DB with a database index of its own (not 0)"
        )
    if min(args.streams, args.subscribers, args.events) < 1 or min(args.rates, default=0) <= 0:
        p.error("--streams, --subscribers, --events and --rates must be positive")
    if args.write and args.trace_memory:
        p.error("--trace-memory distorts the figures; do not --write them")
    return args


def check_fd_limit(args: argparse.Namespace) -> None:
    """Raise the soft limit of open files to the hard one (the server and the client
    inherit it) and fail early when even that is too few."""
    limit = raise_fd_limit()
    needed = max(args.streams, args.subscribers) + FDS_PER_SERVER
    if limit < needed:
        raise BenchError(f"open files limit {limit} < {needed}: raise the hard limit (ulimit -Hn)")


def run(args: argparse.Namespace, h: Harness) -> Results:
    check_fd_limit(args)
    stream_io.flush_redis(args.redis)
    h.open()
    phases = Phases(args, h)
    phases.submit()
    if not args.skip_idle:
        phases.idle(KEEPALIVE)
        phases.idle(STREAMS)
    if not args.skip_fanout:
        phases.fanout()
    return phases.results


def method(args: argparse.Namespace) -> str:
    rates = " and ".join(f"{r:g}" for r in args.rates)
    return (
        "`agentsvc serve` (one uvicorn process, uvloop and httptools), log level"
        f" `{args.log_level}`, `AGENTSVC_EMBEDDED_WORKERS=0` and `AGENTSVC_REDIS_URL` on a"
        " Redis database index of its own, every other setting at its default (a ping"
        " comment every 15 s, the backstop checking idle readers every 1 s, a database pool"
        " of 10). Every run is `POST /agent/submit` to the built-in `assistant` agent and,"
        " with no worker, stays pending: its stream sends `run.started` (id 0), then idles."
        " Each measurement starts a fresh server process and first opens and closes"
        f" {args.warmup} connections of the kind measured. The connections are held by"
        " `bench/stream_client.py`, a separate process (asyncio protocol on uvloop, its own"
        f" HTTP/1.1 and SSE parsing, {args.open_parallel} connections being opened at a time)."
        " *Idle*: VmRSS of the server (the `agentsvc serve` process itself: uvicorn runs in"
        f" it) before opening and {args.settle:g} s after the last connection was established;"
        f" CPU over the next {args.idle_s:g} s. The keep-alive baseline is the same app served"
        " by `uvicorn bench.servers:agentsvc_app --factory` with the same flags and a long"
        " keep-alive timeout (`agentsvc serve` keeps uvicorn's 5 s, which would close idle"
        " connections). *Fan-out*, at each rate: a raw redis-py pub/sub round trip (publisher"
        f" and subscriber in one process); then {args.events} `llm.delta` events (seq 1, 2,"
        f" …) published at {rates} per second into a pending run's live bus by"
        " `bench/stream_publish.py`, a separate process calling the app's own"
        " `RedisBus.publish` once per event with `sent_at` stamped just before, read by one"
        f" subscriber, then into another run's bus read by {args.subscribers} subscribers."
        " Latency = the client's receive time minus `sent_at`, over every delivery; CPU as a"
        " share of one core from the first publish until the client had every event."
        " *Not ours* is the share of both cores used by processes outside the benchmark"
        " (other work on the machine) in the same window."
    )


def report_text(r: Results) -> list[str]:
    lines = [report.aligned(stream_report.idle_rows(r)), ""]
    lines += [report.aligned(stream_report.fanout_rows(r)), *stream_report.worst_lines(r), ""]
    if r.trace_lines:
        traced = [row for row in r.idle if row.traced_growth_bytes is not None]
        if traced:
            per = traced[0].traced_growth_bytes or 0
            lines.append(
                f"tracemalloc: {per / max(traced[0].opened, 1):.0f} bytes per stream traced"
            )
        lines += [*r.trace_lines, ""]
    return [*lines, *stream_report.target_lines(r), stream_report.check_line(r)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    harness.exit_on_sigterm()
    h = Harness(
        postgres=args.postgres, app_dir=args.app_dir, name="stream", keep_logs=args.keep_logs
    )
    started = time.monotonic()
    try:
        results = run(args, h)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        h.close()
        stream_io.flush_redis(args.redis)
    print("\n".join(["", *report_text(results)]))  # noqa: T201
    print(f"({time.monotonic() - started:.0f} s)")  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=1, default=str))
    if args.write:
        section = stream_report.markdown_section(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=report.Machine.describe(postgres=pg.server_version(args.postgres), wrk="-"),
            commit=harness.commit_of(args.app_dir),
            method=method(args),
            r=results,
            command=harness.reproduce("bench.stream_bench", argv),
        )
        path = ROOT / "BENCHMARKS.md"
        report.write_section(path, section, begin=stream_report.BEGIN, end=stream_report.END)
        print(f"wrote {path}")  # noqa: T201
    return 1 if results.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
