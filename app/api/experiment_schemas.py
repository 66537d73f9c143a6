"""Body of `GET /agent/experiments/{agent}` (also printed by `agentsvc experiments report
--json`). Rates and intervals are rounded to 4 decimals, latencies to 0.1 ms."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.agents.policy import TrafficPolicy
from app.services.experiment_stats import Difference, GroupStats, Interval, ShadowPairs
from app.services.experiments import ExperimentReport

Interval95 = tuple[float, float]


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _ci(interval: Interval) -> Interval95:
    return (round(interval[0], 4), round(interval[1], 4))


def _ci_or_none(interval: Interval | None) -> Interval95 | None:
    return None if interval is None else _ci(interval)


class DifferenceRead(BaseModel):
    baseline: str
    """The group subtracted: the baseline version or variant, or `primary` for shadows."""
    estimate: float
    """This group's rate minus the baseline's (0.05 = 5 points better)."""
    ci95: Interval95
    """Newcombe's 95% interval: when it contains 0, the difference may be noise."""

    @classmethod
    def of(cls, diff: Difference | None) -> DifferenceRead | None:
        if diff is None:
            return None
        return cls(baseline=diff.baseline, estimate=round(diff.estimate, 4), ci95=_ci(diff.ci95))


class LatencyRead(BaseModel):
    n: int
    """Completed and failed runs with both timestamps."""
    p50: float | None
    p95: float | None


class FeedbackStatsRead(BaseModel):
    ratings: int
    up: int
    down: int
    up_rate: float
    ci95: Interval95


class GroupStatsRead(BaseModel):
    runs: int
    """Finished runs (completed + failed + cancelled)."""
    in_flight: int
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    """completed / (completed + failed); null without a sample."""
    success_ci95: Interval95 | None
    """Wilson 95% interval of success_rate."""
    error_types: dict[str, int]
    latency_ms: LatencyRead
    turns_per_run: float | None
    tokens_per_run: float | None
    """Input plus output tokens, mean over finished runs."""
    cost_per_run_usd: float | None
    cost_usd: float
    """Total, runs in flight included."""
    tool_calls: int
    tool_errors: int
    """Tool calls that failed (`error`) or were called with bad arguments (`invalid`)."""
    tool_error_rate: float | None
    feedback: FeedbackStatsRead | None
    """The owners' current thumbs up / down; null without ratings."""
    success_diff: DifferenceRead | None = None
    up_rate_diff: DifferenceRead | None = None

    @staticmethod
    def fields_of(s: GroupStats) -> dict[str, object]:
        """The stats as this model's fields (subclasses add their group's key)."""
        feedback = s.feedback
        return {
            "runs": s.runs,
            "in_flight": s.in_flight,
            "completed": s.completed,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "success_rate": _r(s.success_rate),
            "success_ci95": _ci_or_none(s.success_ci95),
            "error_types": s.error_types,
            "latency_ms": LatencyRead(
                n=s.latency_ms.n, p50=_r(s.latency_ms.p50, 1), p95=_r(s.latency_ms.p95, 1)
            ),
            "turns_per_run": _r(s.turns_per_run, 2),
            "tokens_per_run": _r(s.tokens_per_run, 2),
            "cost_per_run_usd": _r(s.cost_per_run_usd, 8),
            "cost_usd": round(s.cost_usd, 8),
            "tool_calls": s.tool_calls,
            "tool_errors": s.tool_errors,
            "tool_error_rate": _r(s.tool_error_rate),
            "feedback": None
            if feedback is None
            else FeedbackStatsRead(
                ratings=feedback.ratings,
                up=feedback.up,
                down=feedback.down,
                up_rate=round(feedback.up_rate, 4),
                ci95=_ci(feedback.ci95),
            ),
            "success_diff": DifferenceRead.of(s.success_diff),
            "up_rate_diff": DifferenceRead.of(s.up_rate_diff),
        }


# Each group's key comes first in the JSON: pydantic lays out fields of the last base first.
class _VersionKey(BaseModel):
    version: str
    baseline: bool
    """The policy's stable version: the others are compared with it."""


class _VariantKey(BaseModel):
    experiment: str
    variant: str
    versions: list[str]
    baseline: bool
    """The control (the experiment's first variant): the others are compared with it."""


class _ShadowKey(BaseModel):
    version: str


class VersionGroupRead(GroupStatsRead, _VersionKey):
    pass


class VariantGroupRead(GroupStatsRead, _VariantKey):
    pass


class ShadowPairsRead(BaseModel):
    pairs: int
    """Shadow runs whose primary also finished."""
    matching: int
    """Same output (after whitespace and case folding), or the same error type."""
    match_rate: float | None
    match_ci95: Interval95 | None
    compared: int
    """Pairs where neither run was cancelled: the sample of success_diff."""
    success_diff: DifferenceRead | None
    """Shadow success rate minus the primaries' over the compared pairs."""

    @classmethod
    def of(cls, p: ShadowPairs) -> ShadowPairsRead:
        return cls(
            pairs=p.pairs,
            matching=p.matching,
            match_rate=_r(p.match_rate),
            match_ci95=_ci_or_none(p.match_ci95),
            compared=p.compared,
            success_diff=DifferenceRead.of(p.success_diff),
        )


class ShadowGroupRead(GroupStatsRead, _ShadowKey):
    pairing: ShadowPairsRead


class ExperimentReportRead(BaseModel):
    """An agent's versions, A/B variants and shadow versions side by side."""

    agent: str
    since: datetime
    until: datetime
    policy: TrafficPolicy
    """The policy in force now: it names the baselines."""
    runs_read: int
    truncated: bool
    """True when the window held more runs than one report reads (200,000): only the
    newest were read, from `oldest_read` on."""
    oldest_read: datetime | None
    versions: list[VersionGroupRead]
    """Live runs by agent version; the stable version is the baseline."""
    variants: list[VariantGroupRead]
    """Live runs of A/B experiments by variant; each experiment's control is its baseline."""
    shadows: list[ShadowGroupRead]
    """Shadow runs by version, and how they fared against the runs they copied."""

    @classmethod
    def from_report(cls, report: ExperimentReport) -> ExperimentReportRead:
        return cls(
            agent=report.agent,
            since=report.since,
            until=report.until,
            policy=report.policy,
            runs_read=report.runs_read,
            truncated=report.truncated,
            oldest_read=report.oldest_read,
            versions=[
                VersionGroupRead.model_validate(
                    {"version": g.version, "baseline": g.baseline}
                    | GroupStatsRead.fields_of(g.stats)
                )
                for g in report.versions
            ],
            variants=[
                VariantGroupRead.model_validate(
                    {
                        "experiment": g.experiment,
                        "variant": g.variant,
                        "versions": list(g.versions),
                        "baseline": g.baseline,
                    }
                    | GroupStatsRead.fields_of(g.stats)
                )
                for g in report.variants
            ],
            shadows=[
                ShadowGroupRead.model_validate(
                    {"version": g.version, "pairing": ShadowPairsRead.of(g.pairs)}
                    | GroupStatsRead.fields_of(g.stats)
                )
                for g in report.shadows
            ],
        )
