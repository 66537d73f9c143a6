"""Figures of a jobs benchmark phase, from the runs table's own timestamps.

`created_at` is stamped by the API just before it inserts the run, `started_at` by
the worker just before its claim statement, `finished_at` by the worker's last write;
all with Python UTC clocks on this one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bench.jobs_db import JobTimes, QueueSample
from bench.paced import percentile
from bench.pg import DbStats
from bench.procs import CpuUse


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """How fast a phase's runs were completed."""

    jobs: int
    completed: int
    submit_s: float
    """First to last `created_at`."""
    window_s: float
    """From the first `created_at` (or, draining a filled queue, the first `started_at`)
    to the last `finished_at`."""
    per_second: float
    """Completed runs / window."""
    steady_per_second: float
    """Runs finished in the middle half of the window / half the window."""
    claims: int
    """Distinct `started_at`: one per claim statement that took runs."""
    max_backlog: int
    """Most runs seen pending at once."""

    @property
    def submit_per_second(self) -> float:
        return self.jobs / self.submit_s if self.submit_s else 0.0

    @property
    def claim_batch(self) -> float:
        return self.jobs / self.claims if self.claims else 0.0


def throughput(
    times: list[JobTimes], timeline: list[QueueSample], *, from_first_start: bool
) -> Throughput:
    created = [t.created_at for t in times]
    started = [t.started_at for t in times if t.started_at is not None]
    finished = sorted(t.finished_at for t in times if t.finished_at is not None)
    if not created or not finished:
        return Throughput(
            jobs=len(times),
            completed=0,
            submit_s=0.0,
            window_s=0.0,
            per_second=0.0,
            steady_per_second=0.0,
            claims=0,
            max_backlog=0,
        )
    origin = min(started) if from_first_start and started else min(created)
    window = _seconds(origin, finished[-1])
    quarter = window / 4
    middle = [f for f in finished if quarter <= _seconds(origin, f) <= 3 * quarter]
    return Throughput(
        jobs=len(times),
        completed=sum(t.status == "completed" for t in times),
        submit_s=_seconds(min(created), max(created)),
        window_s=window,
        per_second=sum(t.status == "completed" for t in times) / window if window else 0.0,
        steady_per_second=len(middle) / (2 * quarter) if quarter else 0.0,
        claims=len(set(started)),
        max_backlog=max((s.pending for s in timeline), default=0),
    )


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Per-run delays of a phase, in ms."""

    jobs: int
    start_p50_ms: float
    start_p99_ms: float
    start_max_ms: float
    finish_p50_ms: float
    finish_p99_ms: float
    run_p50_ms: float
    """From `started_at` to `finished_at`: claim, LLM call and the final write."""
    claims: int


def latency(times: list[JobTimes]) -> Latency:
    done = [t for t in times if t.started_at is not None and t.finished_at is not None]
    start = sorted(_seconds(t.created_at, t.started_at) for t in done if t.started_at)
    finish = sorted(_seconds(t.created_at, t.finished_at) for t in done if t.finished_at)
    run = sorted(
        _seconds(t.started_at, t.finished_at) for t in done if t.started_at and t.finished_at
    )
    return Latency(
        jobs=len(times),
        start_p50_ms=1000 * percentile(start, 0.50),
        start_p99_ms=1000 * percentile(start, 0.99),
        start_max_ms=1000 * (start[-1] if start else 0.0),
        finish_p50_ms=1000 * percentile(finish, 0.50),
        finish_p99_ms=1000 * percentile(finish, 0.99),
        run_p50_ms=1000 * percentile(run, 0.50),
        claims=len({t.started_at for t in done}),
    )


@dataclass(frozen=True, kw_only=True)
class Cost:
    """What a phase cost per job: CPU by party, and database work."""

    jobs: int
    cpu: CpuUse
    """Parties: api, workers, postgres, llm, load (wrk or the paced client)."""
    db: DbStats
    """pg_stat_database over the phase, the benchmark's own queries taken out."""

    def cpu_ms(self, party: str) -> float:
        return 1000 * self.cpu.parties.get(party, 0.0) / self.jobs if self.jobs else 0.0

    def machine_ms(self) -> float:
        """CPU ms per job that all cores were busy for (anyone's): CPU that processes which
        exited in the phase used is counted here, and other work on the machine too."""
        return 1000 * self.cpu.machine_busy_s / self.jobs if self.jobs else 0.0

    def per_job(self, count: int) -> float:
        return count / self.jobs if self.jobs else 0.0


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()
