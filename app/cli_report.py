"""`agentsvc experiments report`: the window's parsing and the report as text tables."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from app.api.experiment_schemas import (
    DifferenceRead,
    ExperimentReportRead,
    GroupStatsRead,
    ShadowGroupRead,
)
from app.settings import Settings
from app.store.db import Database

_AGO = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, now: datetime) -> datetime:
    """`24h`, `7d`, `30m`, `2w` (that long before `now`) or ISO 8601 with a timezone."""
    ago = _AGO.match(text.strip())
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (24h, 7d) nor ISO 8601") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} needs a timezone (e.g. 2025-01-31T00:00:00Z)")
    return when


def report_work(
    agent: str, since: datetime | None, until: datetime | None, *, now: datetime
) -> Callable[[Settings, Database], Awaitable[ExperimentReportRead]]:
    """The command's database work: the report under the stored policy, as the route's body."""
    from app.agents.registry import build_registry
    from app.services.experiments import report_for
    from app.services.rollouts import PolicyBook

    async def work(settings: Settings, db: Database) -> ExperimentReportRead:
        registry = build_registry(settings.agents_module)
        book = PolicyBook(db, registry, refresh_s=settings.policy_refresh_s)
        report = await report_for(
            None,
            db=db,
            registry=registry,
            book=book,
            agent=agent,
            since=since,
            until=until,
            now=now,
        )
        return ExperimentReportRead.from_report(report)

    return work


_COLUMNS = (
    "runs",
    "in flight",
    "success (n)",
    "95% CI",
    "vs baseline [95% CI]",
    "p50 ms",
    "p95 ms",
    "turns",
    "tokens",
    "$/run",
    "$ total",
    "tool err (n)",
    "thumbs up (n)",
)


def render_report(report: ExperimentReportRead) -> str:
    """The report as one compact table per group kind."""
    policy = report.policy
    lines = [
        f"agent {report.agent}: runs created {report.since.isoformat()} .. "
        f"{report.until.isoformat()} ({report.runs_read} read)",
        f"policy: stable {policy.stable}"
        + (
            f", canary {policy.canary.version} ({policy.canary.weight:.0%})"
            if policy.canary
            else ""
        )
        + (f", experiment {policy.experiment.name}" if policy.experiment else "")
        + (f", shadow {policy.shadow.version} ({policy.shadow.rate:.0%})" if policy.shadow else ""),
    ]
    if report.truncated and report.oldest_read is not None:
        lines.append(f"TRUNCATED: only runs created since {report.oldest_read.isoformat()} read")
    lines += ["", "versions (live runs; baseline: stable)"]
    lines += _table("version", [(g.version, g.baseline, g) for g in report.versions])
    lines += ["", "variants (A/B; baseline: the control)"]
    lines += _table(
        "experiment/variant",
        [(f"{g.experiment}/{g.variant}", g.baseline, g) for g in report.variants],
    )
    lines += ["", "shadows (vs the live runs they copied)"]
    lines += _table("version", [(g.version, False, g) for g in report.shadows])
    lines += _pairings(report.shadows)
    return "\n".join(lines)


def _table(key: str, groups: Sequence[tuple[str, bool, GroupStatsRead]]) -> list[str]:
    """One row per group (`*` marks the baseline), then each group's error types."""
    if not groups:
        return ["  (no runs)"]
    rows = [[key, *_COLUMNS]]
    notes: list[str] = []
    for name, baseline, g in groups:
        rows.append([f"{name} *" if baseline else name, *_cells(g)])
        if g.error_types:
            errors = ", ".join(f"{t} {n}" for t, n in g.error_types.items())
            notes.append(f"  {name} errors: {errors}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = [
        "  "
        + "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return out + notes


def _cells(g: GroupStatsRead) -> list[str]:
    decided = g.completed + g.failed
    fb = g.feedback
    return [
        str(g.runs),
        str(g.in_flight),
        f"{_pct(g.success_rate)} ({decided})",
        _interval(g.success_ci95),
        _diff(g.success_diff),
        _num(g.latency_ms.p50, 0),
        _num(g.latency_ms.p95, 0),
        _num(g.turns_per_run, 2),
        _num(g.tokens_per_run, 0),
        _num(g.cost_per_run_usd, 6),
        f"{g.cost_usd:.6f}",
        f"{_pct(g.tool_error_rate)} ({g.tool_calls})",
        "-" if fb is None else f"{_pct(fb.up_rate)} ({fb.ratings})",
    ]


def _pairings(shadows: Sequence[ShadowGroupRead]) -> list[str]:
    return [
        f"  {g.version} pairs: {g.pairing.pairs}, matching {g.pairing.matching} "
        f"({_pct(g.pairing.match_rate)} {_interval(g.pairing.match_ci95)}); "
        f"success vs primary over {g.pairing.compared}: {_diff(g.pairing.success_diff)}"
        for g in shadows
    ]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def _diff(diff: DifferenceRead | None) -> str:
    if diff is None:
        return "-"
    low, high = diff.ci95
    return f"{diff.estimate * 100:+.1f} pts [{low * 100:+.1f}, {high * 100:+.1f}]"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
