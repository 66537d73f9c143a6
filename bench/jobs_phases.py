"""The phases of the jobs benchmark: baselines, then per number of workers latency,
throughput and drain. Each phase measures CPU and database work from its start until
every run it created has ended, and waits no longer than its bounds."""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from bench import jobs_db, pg, procs, servers
from bench.harness import Harness
from bench.jobs_db import JobTimes, QueueSample
from bench.jobs_report import BARE, SUBMIT, Baseline, LatencyRow, Results, ThroughputRow
from bench.jobs_stats import Cost, latency, throughput
from bench.load import Load, LoadResult, run_wrk, start_wrk, write_script
from bench.paced import Paced, run_paced
from bench.pg import DbStats
from bench.procs import BenchError, Child

STATS_FLUSH_S = 11.0
"""PostgreSQL (15) backends publish their counters when idle, at most once a second, and
ten seconds later when the shared entry was locked by another backend at the time."""
READY_TIMEOUT_S = 60.0
MAX_ERROR_SHARE = 0.01
"""Paced submissions may fail this often (they are reported); more stops the benchmark."""


class Phases:
    """Runs the phases against one API process and records them in `results`."""

    def __init__(
        self, args: argparse.Namespace, h: Harness, results: Results, *, api_port: int
    ) -> None:
        self.args = args
        self.h = h
        self.results = results
        self.api_port = api_port
        self.api: Child | None = None
        self.workers: list[Child] = []
        self._load = Load(
            body=servers.RUN_BODY, api_key=servers.API_KEY, connections=args.connections
        )

    # -- measuring -------------------------------------------------------------------

    def _meter(self, server: Child | None = None, name: str = "api") -> procs.CpuMeter:
        """CPU of `server` (the API by default) under `name`, the workers, PostgreSQL and
        the fake model."""
        target, llm, workers = server or self.api, self.h.llm, list(self.workers)
        return procs.CpuMeter(
            {
                name: lambda: procs.descendants(target.pid) if target else [],
                "workers": lambda: [p for w in workers for p in procs.descendants(w.pid)],
                "postgres": lambda: procs.pids_named("postgres"),
                "llm": lambda: [llm.pid] if llm else [],
            }
        )

    def _cost(
        self,
        meter: procs.CpuMeter,
        before: DbStats,
        *,
        load_s: float,
        jobs: int = 0,
        watched: list[QueueSample] | None = None,
    ) -> Cost:
        """Stop `meter`; database counters since `before` once the backends published
        them, without the watcher's own statements (one transaction each) and connection.
        The jobs are those the watcher saw created, unless `watched` is None."""
        cpu = meter.stop()
        time.sleep(STATS_FLUSH_S)
        db = pg.stats(self.args.postgres, self.h.db_name).minus(before)
        if watched is not None:
            jobs = watched[-1].created
            own = len(watched) + 1  # its SET and one statement per sample
            db = replace(db, commits=db.commits - own, sessions=db.sessions - 1)
        return Cost(jobs=jobs, cpu=replace(cpu, parties={**cpu.parties, "load": load_s}), db=db)

    def _watch(
        self, since: datetime, done: Callable[[QueueSample], bool], timeout_s: float
    ) -> list[QueueSample]:
        return jobs_db.watch_queue(
            self.args.postgres,
            self.h.db_name,
            user=servers.API_USER,
            since=since,
            done=done,
            interval_s=self.args.poll,
            timeout_s=timeout_s,
        )

    def _times(self, since: datetime) -> list[JobTimes]:
        """Timestamps of every run created since `since`."""
        return jobs_db.job_times(
            self.args.postgres, self.h.db_name, since=since, until=datetime.now(UTC)
        )

    def _stats(self) -> DbStats:
        return pg.stats(self.args.postgres, self.h.db_name)

    # -- baselines -------------------------------------------------------------------

    def baseline(self, kind: str, server: Child, port: int, path: str) -> None:
        """Closed-loop wrk on `path`: warm-up, then one measured window."""
        args = self.args
        script = write_script(self._load, self.h.tmp, name=kind)
        url = f"http://127.0.0.1:{port}{path}"
        if args.baseline_warmup:
            run_wrk(url, self._load, duration_s=args.baseline_warmup, script=script)
        before, meter = self._stats(), self._meter(server, "bare" if kind == BARE else "api")
        meter.start()
        result = run_wrk(url, self._load, duration_s=args.baseline_s, script=script)
        cost = self._cost(meter, before, load_s=result.wrk_cpu_s, jobs=result.requests)
        _fail_on_errors(kind, result, server)
        self.results.baselines.append(
            Baseline(kind=kind, workers=0, load=result, cost=cost, rate=result.per_second)
        )
        _show(f"{kind}: {result.per_second:.0f} req/s, p50 {result.p50_ms:.1f} ms")

    # -- per number of workers -------------------------------------------------------

    def stage(self, k: int) -> None:
        """Start K workers, run every phase, stop them."""
        env = self.h.agentsvc_env(
            log_level=self.args.log_level,
            worker_concurrency=self.args.concurrency,
            pool_size=self.args.pool_size,
        )
        self.workers = [
            self.h.start(f"worker{k}_{i}", servers.worker_command(), env) for i in range(k)
        ]
        self._wait_listening(1 + k)
        for rate in self.args.rates:
            self._latency(k, rate)
        self._throughput(k)
        if self.args.backlog:
            self._drain(k)
        for worker in self.workers:
            procs.stop(worker)
        self.workers = []

    def _wait_listening(self, processes: int) -> None:
        """Until `processes` agentsvc processes LISTEN for wake-ups (each is up)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while jobs_db.listeners(self.args.postgres, self.h.db_name) < processes:
            for child in self.workers:
                if child.popen.poll() is not None:
                    raise BenchError(f"{child.name} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"fewer than {processes} agentsvc processes listening")
            time.sleep(0.2)

    def _latency(self, k: int, rate: int) -> None:
        args = self.args
        since, before, meter = datetime.now(UTC), self._stats(), self._meter()
        meter.start()
        profiler = self._profile(self.workers[0], f"worker-{k}-paced-{rate}")
        paced = run_paced(
            Paced(
                port=self.api_port,
                path="/agent/submit",
                body=servers.RUN_BODY,
                api_key=servers.API_KEY,
                rate=rate,
                warmup_s=args.paced_warmup,
                duration_s=args.paced_s,
            )
        )
        timeline = self._watch(since, lambda s: s.pending + s.running == 0, args.drain_timeout)
        cost = self._cost(meter, before, load_s=paced.client_cpu_s, watched=timeline)
        _wait(profiler)
        times = self._times(paced.measured_from)
        if paced.error_count > MAX_ERROR_SHARE * paced.sent:
            state = "running" if self.api and self.api.popen.poll() is None else "exited"
            tail = self.api.tail() if self.api else ""
            raise BenchError(f"submissions failed at {rate}/s: {paced.errors}; API {state}\n{tail}")
        delays = latency(times)
        self.results.latency.append(
            LatencyRow(
                workers=k,
                concurrency=args.concurrency,
                paced=paced,
                delays=delays,
                cost=cost,
            )
        )
        _show(
            f"{k} workers, {rate}/s: start p50 {delays.start_p50_ms:.1f} ms,"
            f" p99 {delays.start_p99_ms:.1f} ms; finish p50 {delays.finish_p50_ms:.1f} ms"
        )

    def _submit_until(
        self, since: datetime, limit: int, until_idle: bool
    ) -> tuple[LoadResult, list[QueueSample]]:
        """wrk submits until `limit` runs exist or `--submit-s` passed; then, when
        `until_idle`, wait until every run ended. The queue samples meanwhile."""
        args = self.args
        load = replace(self._load, max_requests=limit)
        wrk = start_wrk(
            f"http://127.0.0.1:{self.api_port}/agent/submit",
            load,
            duration_s=args.submit_s,
            script=write_script(load, self.h.tmp, name="submit"),
        )
        seen: list[int] = []

        def done(s: QueueSample) -> bool:
            if s.created >= limit:
                wrk.interrupt()
            settled = not wrk.running() and seen[-1:] == [s.created]  # no late inserts
            seen.append(s.created)
            return settled and (not until_idle or s.pending + s.running == 0)

        try:
            timeline = self._watch(since, done, args.submit_s + args.drain_timeout)
        finally:
            wrk.interrupt()
            result = wrk.finish()
        return result, timeline

    def _throughput(self, k: int) -> None:
        since, before, meter = datetime.now(UTC), self._stats(), self._meter()
        meter.start()
        load, timeline = self._submit_until(since, self.args.jobs, until_idle=True)
        cost = self._cost(meter, before, load_s=load.wrk_cpu_s, watched=timeline)
        _fail_on_errors("submit", load, self.api)
        times = self._times(since)
        rate = throughput(times, timeline, from_first_start=False)
        self.results.throughput.append(
            ThroughputRow(
                workers=k,
                concurrency=self.args.concurrency,
                drain_only=False,
                rate=rate,
                cost=cost,
                load=load,
            )
        )
        _show(f"{k} workers, submit while draining: {rate.jobs} jobs, {rate.per_second:.0f}/s")

    def _drain(self, k: int) -> None:
        """Fill the queue through the API while the workers are paused, then drain it."""
        args = self.args
        for worker in self.workers:
            procs.pause(worker)
        try:
            since, before, meter = datetime.now(UTC), self._stats(), self._meter()
            meter.start()
            profiler = self._profile(self.api, "api-submit")
            fill, timeline = self._submit_until(since, args.backlog, until_idle=False)
            cost = self._cost(meter, before, load_s=fill.wrk_cpu_s, watched=timeline)
            _wait(profiler)
            _fail_on_errors("submit", fill, self.api)
            fill_cost, before, meter = cost, self._stats(), self._meter()
            meter.start()
        finally:
            for worker in self.workers:
                procs.resume(worker)
        profiler = self._profile(self.workers[0], f"worker-{k}-drain")
        timeline = self._watch(since, lambda s: s.pending + s.running == 0, args.drain_timeout)
        cost = self._cost(meter, before, load_s=0.0, watched=timeline)
        _wait(profiler)
        times = self._times(since)
        rate = throughput(times, timeline, from_first_start=True)
        # wrk idles from its last answer to the interrupt: the database times the fill.
        self.results.baselines.append(
            Baseline(kind=SUBMIT, workers=k, load=fill, cost=fill_cost, rate=rate.submit_per_second)
        )
        self.results.throughput.append(
            ThroughputRow(
                workers=k,
                concurrency=args.concurrency,
                drain_only=True,
                rate=rate,
                cost=cost,
                load=None,
            )
        )
        _show(f"{k} workers, drain: {rate.jobs} jobs, {rate.per_second:.0f}/s")

    def _profile(self, child: Child | None, name: str) -> subprocess.Popen[bytes] | None:
        if self.args.profile is None or child is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / f"{name}.txt"
        return procs.py_spy_record(child.pid, out, duration_s=self.args.profile_s)


def _wait(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        try:
            profiler.wait(timeout=120)
        except subprocess.TimeoutExpired:
            profiler.kill()


def _fail_on_errors(what: str, result: LoadResult, server: Child | None) -> None:
    if result.error_count:
        tail = server.tail() if server else ""
        raise BenchError(f"{what}: wrk saw errors {result.errors}\n{tail}")


def _show(line: str) -> None:
    print(line, flush=True)  # noqa: T201
