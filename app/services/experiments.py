"""The experiments report: an agent's versions, A/B variants and shadow versions side by
side over a time window, each with its sample sizes and 95% intervals.

Groups:
- versions: live runs by agent version; the baseline is the policy's stable version.
- variants: live runs of an experiment by variant; the baseline is the experiment's first
  variant when it is the policy's current experiment, else its alphabetically first one.
- shadows: shadow runs by version, with how they fared against the live runs they copied.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.agents.policy import TrafficPolicy
from app.agents.registry import AgentRegistry
from app.errors import InvalidRequest, NotFound
from app.services.auth import Principal
from app.services.experiment_stats import (
    GroupStats,
    ShadowPairs,
    compare,
    group_stats,
    shadow_pairs,
)
from app.services.rollouts import PolicyBook
from app.store.db import Database
from app.store.experiments import MAX_ROWS, RunFacts, ToolCount, WindowRuns, read_window

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=90)


@dataclass(frozen=True, kw_only=True)
class VersionGroup:
    version: str
    baseline: bool
    stats: GroupStats


@dataclass(frozen=True, kw_only=True)
class VariantGroup:
    experiment: str
    variant: str
    versions: tuple[str, ...]
    """The agent versions that served the variant's runs (one unless the policy changed)."""
    baseline: bool
    stats: GroupStats


@dataclass(frozen=True, kw_only=True)
class ShadowGroup:
    version: str
    stats: GroupStats
    pairs: ShadowPairs


@dataclass(frozen=True, kw_only=True)
class ExperimentReport:
    agent: str
    since: datetime
    until: datetime
    policy: TrafficPolicy
    """The policy in force when the report was made (it names the baselines)."""
    runs_read: int
    truncated: bool
    """The window held more than `max_rows` runs: only the newest were read."""
    oldest_read: datetime | None
    """When the oldest run read was created: the report covers [oldest_read, until) when
    `truncated`."""
    versions: tuple[VersionGroup, ...]
    variants: tuple[VariantGroup, ...]
    shadows: tuple[ShadowGroup, ...]


def resolve_window(
    since: datetime | None, until: datetime | None, *, now: datetime
) -> tuple[datetime, datetime]:
    """The report's window: the last 24 h by default, at most 90 days, since < until."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name} needs a timezone (e.g. 2025-01-31T00:00:00Z)")
    end = until or now
    start = since or end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidRequest("since must be before until")
    if end - start > MAX_WINDOW:
        raise InvalidRequest(f"the window is longer than {MAX_WINDOW.days} days")
    return start, end


async def report_for(
    principal: Principal | None,
    *,
    db: Database,
    registry: AgentRegistry,
    book: PolicyBook,
    agent: str,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
) -> ExperimentReport:
    """The report for `agent` (admins; `principal` None is the CLI)."""
    if principal is not None:
        principal.require_admin("only admins see experiment reports")
    if agent not in registry.agents:
        raise NotFound(f"agent {agent} not found")
    start, end = resolve_window(since, until, now=now)
    state = await book.state(agent)
    return await build_report(db, state.policy, agent, start, end)


async def build_report(
    db: Database,
    policy: TrafficPolicy,
    agent: str,
    since: datetime,
    until: datetime,
    *,
    max_rows: int = MAX_ROWS,
) -> ExperimentReport:
    """Compare the agent's runs created in [since, until) by version, variant and shadow."""
    async with db.read() as conn:
        window = await read_window(conn, agent, since=since, until=until, max_rows=max_rows)
    live = [r for r in window.runs if r.shadow_of is None]
    tools = _tools_by_group(window.tool_counts)
    return ExperimentReport(
        agent=agent,
        since=since,
        until=until,
        policy=policy,
        runs_read=len(window.runs),
        truncated=window.truncated,
        oldest_read=window.runs[-1].created_at if window.runs else None,
        versions=_versions(live, tools, policy.stable),
        variants=_variants(live, tools, policy),
        shadows=_shadows([r for r in window.runs if r.shadow_of is not None], window, tools),
    )


GroupKey = tuple[str, ...]
"""("version", v) and ("shadow", v): live and shadow runs of version v; ("variant",
experiment, variant): live runs of a variant."""


def _tools_by_group(counts: list[ToolCount]) -> dict[GroupKey, Counter[str]]:
    """Tool calls by status for each group of runs."""
    tools: dict[GroupKey, Counter[str]] = defaultdict(Counter)
    for c in counts:
        keys: list[GroupKey] = [("shadow" if c.shadow else "version", c.agent_version)]
        if not c.shadow and c.experiment is not None and c.variant is not None:
            keys.append(("variant", c.experiment, c.variant))
        for key in keys:
            tools[key][c.status] += c.calls
    return tools


def _versions(
    live: list[RunFacts], tools: dict[GroupKey, Counter[str]], stable: str
) -> tuple[VersionGroup, ...]:
    by_version: dict[str, list[RunFacts]] = defaultdict(list)
    for run in live:
        by_version[run.agent_version].append(run)
    stats = {
        v: group_stats(runs, tools.get(("version", v), Counter())) for v, runs in by_version.items()
    }
    base = stats.get(stable)
    return tuple(
        VersionGroup(
            version=version,
            baseline=version == stable,
            stats=s if version == stable or base is None else compare(s, base, stable),
        )
        for version, s in _baseline_first(stats, stable)
    )


def _variants(
    live: list[RunFacts], tools: dict[GroupKey, Counter[str]], policy: TrafficPolicy
) -> tuple[VariantGroup, ...]:
    by_experiment: dict[str, dict[str, list[RunFacts]]] = defaultdict(lambda: defaultdict(list))
    for run in live:
        if run.experiment is not None and run.variant is not None:
            by_experiment[run.experiment][run.variant].append(run)
    current = policy.experiment
    groups: list[VariantGroup] = []
    # The current experiment first, then any earlier ones still in the window.
    for name in sorted(by_experiment, key=lambda n: (current is None or n != current.name, n)):
        variants = by_experiment[name]
        control = (
            current.variants[0].name
            if current is not None and current.name == name
            else min(variants)
        )
        stats = {
            v: group_stats(runs, tools.get(("variant", name, v), Counter()))
            for v, runs in variants.items()
        }
        base = stats.get(control)
        groups.extend(
            VariantGroup(
                experiment=name,
                variant=variant,
                versions=tuple(sorted({r.agent_version for r in variants[variant]})),
                baseline=variant == control,
                stats=s if variant == control or base is None else compare(s, base, control),
            )
            for variant, s in _baseline_first(stats, control)
        )
    return tuple(groups)


def _shadows(
    shadows: list[RunFacts], window: WindowRuns, tools: dict[GroupKey, Counter[str]]
) -> tuple[ShadowGroup, ...]:
    by_version: dict[str, list[RunFacts]] = defaultdict(list)
    for run in shadows:
        by_version[run.agent_version].append(run)
    return tuple(
        ShadowGroup(
            version=version,
            stats=group_stats(runs, tools.get(("shadow", version), Counter())),
            pairs=shadow_pairs(runs, window.primaries),
        )
        for version, runs in sorted(by_version.items())
    )


def _baseline_first(stats: dict[str, GroupStats], baseline: str) -> list[tuple[str, GroupStats]]:
    return sorted(stats.items(), key=lambda item: (item[0] != baseline, item[0]))
