"""The numbers of one group of runs (a version, a variant, a shadow version), and how a
group compares with its baseline. Pure: runs in, numbers out."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from app.observability.stats import newcombe_difference, percentile, wilson_interval
from app.store.experiments import PrimaryFacts, RunFacts

TERMINAL = frozenset({"completed", "failed", "cancelled"})
IN_FLIGHT = frozenset({"pending", "running", "awaiting_approval"})
TOOL_ERRORS = frozenset({"error", "invalid"})
"""Tool call statuses that count as errors: the tool failed, or the model called it wrong.
A refusal (allowlist, approval denied) is policy at work, not an error."""

Interval = tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class Difference:
    """A rate of this group minus the same rate of `baseline`, with Newcombe's 95% CI."""

    baseline: str
    estimate: float
    ci95: Interval


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Run latency (finished_at - started_at) over completed and failed runs."""

    n: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """The owners' current thumbs up / down on the group's runs."""

    ratings: int
    up: int
    down: int
    up_rate: float
    ci95: Interval
    """Wilson 95% interval of `up_rate`."""


@dataclass(frozen=True, kw_only=True)
class GroupStats:
    runs: int
    """Finished runs: completed + failed + cancelled."""
    in_flight: int
    """Pending, running or awaiting approval when the report was made."""
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    """completed / (completed + failed): cancelling is the user's choice, not a failure."""
    success_ci95: Interval | None
    error_types: dict[str, int]
    """Failed runs by error type, most frequent first."""
    latency_ms: Latency
    turns_per_run: float | None
    """Means over finished runs (None when there are none)."""
    tokens_per_run: float | None
    cost_per_run_usd: float | None
    cost_usd: float
    """Total cost of the group's runs, those in flight included."""
    tool_calls: int
    tool_errors: int
    tool_error_rate: float | None
    feedback: Feedback | None
    success_diff: Difference | None = None
    """Success rate minus the baseline's (None for the baseline, or with no sample)."""
    up_rate_diff: Difference | None = None
    """Thumbs-up rate minus the baseline's, when both have ratings."""


@dataclass(frozen=True, kw_only=True)
class ShadowPairs:
    """Shadow runs set against the live runs they copied."""

    pairs: int
    """Shadow runs whose primary also finished."""
    matching: int
    """Pairs with the same outcome: both completed with the same output (compared after
    stripping, collapsing whitespace and case-folding), or both failed with the same
    error type."""
    match_rate: float | None
    match_ci95: Interval | None
    compared: int
    """Pairs in which neither run was cancelled: the sample of `success_diff`."""
    success_diff: Difference | None
    """Shadow success rate minus the primaries', over the `compared` pairs."""


def group_stats(runs: Sequence[RunFacts], tools: Mapping[str, int]) -> GroupStats:
    """The numbers of one group of runs; `tools` counts their tool calls by status."""
    statuses = Counter(r.status for r in runs)
    finished = [r for r in runs if r.status in TERMINAL]
    completed, failed = statuses["completed"], statuses["failed"]
    errors = Counter(r.error_type or "unknown" for r in runs if r.status == "failed")
    tool_calls = sum(tools.values())
    tool_errors = sum(tools.get(s, 0) for s in TOOL_ERRORS)
    return GroupStats(
        runs=len(finished),
        in_flight=sum(statuses[s] for s in IN_FLIGHT),
        completed=completed,
        failed=failed,
        cancelled=statuses["cancelled"],
        success_rate=_rate(completed, completed + failed),
        success_ci95=_interval(completed, completed + failed),
        error_types=dict(errors.most_common()),
        latency_ms=_latency(runs),
        turns_per_run=_mean([r.turns for r in finished]),
        tokens_per_run=_mean([r.tokens for r in finished]),
        cost_per_run_usd=_mean([r.cost_usd for r in finished]),
        cost_usd=sum(r.cost_usd for r in runs),
        tool_calls=tool_calls,
        tool_errors=tool_errors,
        tool_error_rate=_rate(tool_errors, tool_calls),
        feedback=_feedback(runs),
    )


def compare(group: GroupStats, baseline: GroupStats, baseline_name: str) -> GroupStats:
    """`group` with its success and thumbs-up rates set against `baseline`'s."""
    success = _difference(
        baseline_name,
        (group.completed, group.completed + group.failed),
        (baseline.completed, baseline.completed + baseline.failed),
    )
    up_rate = None
    if group.feedback is not None and baseline.feedback is not None:
        up_rate = _difference(
            baseline_name,
            (group.feedback.up, group.feedback.ratings),
            (baseline.feedback.up, baseline.feedback.ratings),
        )
    return replace(group, success_diff=success, up_rate_diff=up_rate)


def shadow_pairs(
    shadows: Sequence[RunFacts], primaries: Mapping[uuid.UUID, PrimaryFacts]
) -> ShadowPairs:
    """How the shadow runs fared against their primaries."""
    pairs = matching = compared = shadow_ok = primary_ok = 0
    for shadow in shadows:
        primary = primaries.get(shadow.shadow_of) if shadow.shadow_of else None
        if primary is None or shadow.status not in TERMINAL or primary.status not in TERMINAL:
            continue
        pairs += 1
        matching += _same_outcome(shadow, primary)
        if "cancelled" not in (shadow.status, primary.status):
            compared += 1
            shadow_ok += shadow.status == "completed"
            primary_ok += primary.status == "completed"
    return ShadowPairs(
        pairs=pairs,
        matching=matching,
        match_rate=_rate(matching, pairs),
        match_ci95=_interval(matching, pairs),
        compared=compared,
        success_diff=_difference("primary", (shadow_ok, compared), (primary_ok, compared)),
    )


def normalize_output(text: str | None) -> str:
    """An output as it is compared: stripped, whitespace collapsed, case-folded."""
    return " ".join((text or "").split()).casefold()


def _same_outcome(shadow: RunFacts, primary: PrimaryFacts) -> bool:
    if shadow.status == primary.status == "completed":
        return normalize_output(shadow.output) == normalize_output(primary.output)
    if shadow.status == primary.status == "failed":
        return shadow.error_type == primary.error_type
    return False


def _difference(name: str, group: tuple[int, int], baseline: tuple[int, int]) -> Difference | None:
    (k1, n1), (k2, n2) = group, baseline
    if n1 == 0 or n2 == 0:
        return None
    estimate, lower, upper = newcombe_difference(k1, n1, k2, n2)
    return Difference(baseline=name, estimate=estimate, ci95=(lower, upper))


def _latency(runs: Sequence[RunFacts]) -> Latency:
    samples = [
        (r.finished_at - r.started_at).total_seconds() * 1000
        for r in runs
        if r.status in ("completed", "failed")
        and r.started_at is not None
        and r.finished_at is not None
    ]
    if not samples:
        return Latency(n=0, p50=None, p95=None)
    return Latency(n=len(samples), p50=percentile(samples, 50), p95=percentile(samples, 95))


def _feedback(runs: Sequence[RunFacts]) -> Feedback | None:
    ratings = Counter(r.rating for r in runs if r.rating in ("up", "down"))
    total = ratings["up"] + ratings["down"]
    if total == 0:
        return None
    return Feedback(
        ratings=total,
        up=ratings["up"],
        down=ratings["down"],
        up_rate=ratings["up"] / total,
        ci95=wilson_interval(ratings["up"], total),
    )


def _rate(k: int, n: int) -> float | None:
    return None if n == 0 else k / n


def _interval(k: int, n: int) -> Interval | None:
    return None if n == 0 else wilson_interval(k, n)


def _mean(values: Sequence[float]) -> float | None:
    return None if not values else sum(values) / len(values)
