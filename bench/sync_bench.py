"""Sync runs per second and latency of `POST /agent`, against a bare FastAPI baseline.

    .venv/bin/python -m bench.sync_bench                 # 64 connections, 20 s, table only
    .venv/bin/python -m bench.sync_bench --write         # and update BENCHMARKS.md
    .venv/bin/python -m bench.sync_bench --connections 16,64 --pool-sizes 5,10,20

One run: a fresh PostgreSQL database (migrated with `agentsvc migrate`), the fake
model of `bench.llm_server` (answers at once with text: one LLM call, no tool),
then for each load level the bare app and agentsvc under wrk, each after a
warm-up. After each agentsvc server stops, the database must hold every run
completed with exactly one llm_calls row and three run_events rows. Every child
process and the database are removed at the end. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import harness, pg, procs, report, servers
from bench.harness import Harness
from bench.load import Load, run_wrk, write_script
from bench.procs import BenchError, Child
from bench.report import AGENTSVC, BARE, Measurement, Verification

ROOT = Path(__file__).resolve().parent.parent
BODY = servers.RUN_BODY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per stage")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each")
    p.add_argument("--connections", default="64", help="comma list of concurrency levels")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--repeat", type=int, default=1, help="measured windows per row; the best one is kept"
    )
    p.add_argument(
        "--pool-sizes", default="", help="comma list of AGENTSVC_DB_POOL_SIZE (empty: default)"
    )
    p.add_argument("--processes", type=int, default=1, help="server processes (both targets)")
    p.add_argument("--log-level", default="warning", help="uvicorn/agentsvc log level (both)")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--app-dir", type=Path, default=ROOT, help="where the `app` package is")
    p.add_argument("--skip-bare", action="store_true", help="measure agentsvc only")
    p.add_argument("--profile", type=Path, help="py-spy record agentsvc's first window here")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.pool_sizes = [int(s) for s in args.pool_sizes.split(",") if s.strip()] or [None]
    if not harness.loopback_postgres(args.postgres):
        p.error("--postgres must be postgresql://…@127.0.0.1:PORT (traffic stays on loopback)")
    return args


class Bench:
    """One benchmark run: its harness (children, temporary directory, database) and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.harness = Harness(
            postgres=args.postgres, app_dir=args.app_dir, name="bench", keep_logs=args.keep_logs
        )
        self.options = servers.ServeOptions(processes=args.processes, log_level=args.log_level)
        self.measurements: list[Measurement] = []
        self.verifications: list[Verification] = []
        self.profiled = False

    def run(self) -> None:
        h = self.harness
        h.open()
        if not self.args.skip_bare:
            port = procs.free_port()
            bare = h.serve("bare", servers.bare_command(port, self.options), h.env, port)
            for connections in self.args.connections:
                self._measure(BARE, bare, port, connections, None)
            procs.stop(bare)
        for pool_size in self.args.pool_sizes:
            self._agentsvc_stage(pool_size)

    def _agentsvc_stage(self, pool_size: int | None) -> None:
        args, h = self.args, self.harness
        before_stats = pg.stats(args.postgres, h.db_name)
        before_runs = pg.counts(args.postgres, h.db_name).runs
        before_llm = h.llm_completions()
        since = datetime.now(UTC)
        env = h.agentsvc_env(log_level=args.log_level, pool_size=pool_size)
        port = procs.free_port()
        command = servers.agentsvc_command(port, self.options)
        server = h.serve(f"agentsvc_pool{pool_size}", command, env, port)
        answered = sum(
            self._measure(AGENTSVC, server, port, c, pool_size) for c in args.connections
        )
        procs.stop(server)
        counts = pg.counts(args.postgres, h.db_name, since=since)
        runs = counts.runs - before_runs
        completions = h.llm_completions() - before_llm
        problems = counts.problems()
        if completions != runs:
            problems.append(f"{completions} LLM completions for {runs} runs")
        # Each wrk invocation (warm-up and measured) may leave one request per connection open.
        in_flight = sum(args.connections) * (args.repeat + (1 if args.warmup else 0))
        if not answered <= runs <= answered + in_flight:
            problems.append(f"{runs} runs in the database for {answered} answered requests")
        if counts.max_run_ms >= 1000 * servers.SYNC_TIMEOUT_S:
            problems.append(f"a run took {counts.max_run_ms:.0f} ms: it was answered 202")
        self.verifications.append(
            Verification(
                pool_size=pool_size,
                runs=runs,
                answered=answered,
                llm_completions=completions,
                db=pg.stats(args.postgres, h.db_name).minus(before_stats),
                counts=counts,
                problems=problems,
            )
        )

    def _measure(
        self, target: str, server: Child, port: int, connections: int, pool_size: int | None
    ) -> int:
        """Warm up, then measure `--repeat` windows and keep the best; answers wrk saw in all."""
        args = self.args
        load = Load(
            body=BODY, api_key=servers.API_KEY, connections=connections, threads=args.threads
        )
        script = write_script(load, self.harness.tmp)
        url = f"http://127.0.0.1:{port}/agent"
        warm = run_wrk(url, load, duration_s=args.warmup, script=script) if args.warmup else None
        answered = warm.requests if warm else 0
        best: Measurement | None = None
        for _ in range(args.repeat):
            m = self._window(target, server, url, load, script, pool_size)
            answered += m.load.requests
            print(report.text_table([m]).splitlines()[-1], flush=True)  # noqa: T201
            if m.load.error_count:
                raise BenchError(f"{target}: wrk saw errors {m.load.errors}\n{server.tail()}")
            if best is None or m.load.per_second > best.load.per_second:
                best = m
        assert best is not None
        self.measurements.append(best)
        return answered

    def _window(
        self,
        target: str,
        server: Child,
        url: str,
        load: Load,
        script: Path,
        pool_size: int | None,
    ) -> Measurement:
        """One measured window, with the CPU each party used in it."""
        args = self.args
        server_pids = procs.descendants(server.pid)
        llm = self.harness.llm
        meter = procs.CpuMeter(
            {
                "server": lambda: server_pids,
                "postgres": lambda: procs.pids_named("postgres"),
                "llm": lambda: [llm.pid] if llm else [],
            }
        )
        meter.start()
        profiler = self._profiler(server) if target == AGENTSVC else None
        result = run_wrk(url, load, duration_s=args.duration, script=script)
        cpu = meter.stop()
        if profiler is not None:
            profiler.wait(timeout=args.duration + 60)
            self.profiled = True
        return Measurement(
            target=target,
            processes=args.processes,
            pool_size=pool_size,
            connections=load.connections,
            load=result,
            server_cpu_s=cpu.parties["server"],
            postgres_cpu_s=cpu.parties["postgres"],
            llm_cpu_s=cpu.parties["llm"],
            machine_busy_s=cpu.machine_busy_s,
            machine_total_s=cpu.machine_total_s,
        )

    def _profiler(self, server: Child) -> subprocess.Popen[bytes] | None:
        out: Path | None = self.args.profile
        if out is None or self.profiled:
            return None
        return procs.py_spy_record(
            server.pid, out, duration_s=self.args.duration, subprocesses=self.args.processes > 1
        )


def method(args: argparse.Namespace) -> str:
    best_of = f" {args.repeat} times (the best window shown)" if args.repeat > 1 else ""
    served = (
        "`agentsvc serve` (one uvicorn process, uvloop and httptools)"
        if args.processes == 1
        else f"`uvicorn --factory --workers {args.processes}` over agentsvc's `create_app`"
    )
    return (
        f"wrk, {args.threads} thread, closed loop: each connection POSTs"
        f" `{json.dumps(BODY)}` with a bearer"
        f" key as soon as its previous answer arrives; {args.warmup:g} s warm-up, then"
        f" {args.duration:g} s measured{best_of} per row. agentsvc is {served} on a fresh migrated"
        " PostgreSQL database; the built-in `assistant` agent, model `openai/bench-model`"
        " served by `bench/llm_server.py`, which answers at once with text, so each run is one"
        " LLM call and no tool call. The baseline is `bench/bare_app.py`: FastAPI validating"
        " the same body shape with pydantic and answering a Run-shaped JSON of the same size,"
        f" served the same way. Log level `{args.log_level}` for both. CPU ms/run is the CPU"
        " time the server (or all PostgreSQL processes) used in the window per answered request;"
        " for PostgreSQL a lower bound, as backends that exit in the window are not counted."
        " *Not ours* is the share of the cores that processes outside the benchmark used"
        " meanwhile (other work on the machine): when it is high, the figures are low."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    harness.exit_on_sigterm()
    bench = Bench(args)
    started = time.monotonic()
    try:
        bench.run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        bench.harness.close()
    print()  # noqa: T201
    print(report.text_table(bench.measurements))  # noqa: T201
    for line in report.verification_lines(bench.verifications):
        print(line)  # noqa: T201
    print(report.target_line(bench.measurements))  # noqa: T201
    print(f"({time.monotonic() - started:.0f} s)")  # noqa: T201
    if args.write:
        section = report.markdown_section(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=harness.describe_machine(args.postgres),
            commit=harness.commit_of(args.app_dir),
            method=method(args),
            ms=bench.measurements,
            vs=bench.verifications,
            command=harness.reproduce("bench.sync_bench", argv),
        )
        report.write_section(ROOT / "BENCHMARKS.md", section)
        print(f"wrote {ROOT / 'BENCHMARKS.md'}")  # noqa: T201
    return 1 if any(v.problems for v in bench.verifications) else 0


if __name__ == "__main__":
    raise SystemExit(main())
