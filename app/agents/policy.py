"""Traffic policy: which version of an agent serves a request.

An agent's stable version serves everyone unless its policy says otherwise: a canary
version takes a share of the users, an A/B experiment splits the rest between named
variants, and a shadow version receives a sampled copy of live requests in the
background. Users are assigned by hashing their id with a salt (the canary's agent and
version, the experiment's name), so a user sees the same version on every request while
the policy stands, and the canary and the experiment split independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

VersionName = Annotated[str, Field(min_length=1, max_length=64)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class Canary(BaseModel):
    """A new version on a share of the users, watched for automatic rollback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: VersionName
    weight: Share = Field(examples=[0.1])
    """Share of users (0–1) the canary serves; 0 when switched off."""


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    version: VersionName
    """The agent version (its prompt, model, tools) this variant runs."""
    weight: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    """Relative weight among the experiment's variants."""


class Experiment(BaseModel):
    """An A/B test between named variants; the first variant is the control."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    variants: Annotated[list[Variant], Field(min_length=2, max_length=10)]

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} names a variant twice")
        return self


class Shadow(BaseModel):
    """A version that gets a sampled copy of live requests, run in the background."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: VersionName
    rate: Share = Field(examples=[0.05])
    """Share of live requests (0–1) copied to the shadow version."""


@dataclass(frozen=True, slots=True)
class VersionSample:
    """A version's latest finished live runs, as the rollback rule judges them."""

    runs: int
    failed: int
    p95_latency_s: float | None

    @property
    def error_rate(self) -> float:
        return self.failed / self.runs if self.runs else 0.0


class CanaryRegressed(Exception):
    """The canary is worse than stable beyond the rule's margin."""


class RollbackRule(BaseModel):
    """When a canary is switched off: compared with stable over each one's latest runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_runs: Annotated[int, Field(ge=5, le=10_000)] = 50
    """How many of the latest finished runs of each version are compared."""
    min_runs: Annotated[int, Field(ge=1, le=10_000)] = 20
    """The canary is judged only once it has finished this many runs."""
    max_error_rate_increase: Share = 0.05
    """Canary error rate minus stable's above this rolls back (0.05 = 5 points)."""
    max_p95_latency_ratio: Annotated[float, Field(ge=1.0, le=100.0)] = 1.5
    """Canary p95 latency above stable's times this rolls back (with the margin below)."""
    min_p95_latency_increase_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 1.0
    """Canary p95 latency must also be this many seconds above stable's: between two
    versions that answer in milliseconds a ratio measures noise, not a regression."""

    def check(self, canary: VersionSample, stable: VersionSample) -> None:
        """Raise CanaryRegressed when `canary` is worse than `stable` beyond the margins.
        Nothing is judged before the canary has `min_runs` runs; latency only once stable
        has as many (a ratio to a handful of runs says nothing)."""
        if canary.runs < self.min_runs:
            return
        increase = canary.error_rate - stable.error_rate
        if increase > self.max_error_rate_increase:
            raise CanaryRegressed(
                f"error rate {canary.error_rate:.1%} over its last {canary.runs} runs against "
                f"stable's {stable.error_rate:.1%} over {stable.runs} (+{increase:.1%}, "
                f"allowed +{self.max_error_rate_increase:.1%})"
            )
        if (
            stable.runs >= self.min_runs
            and canary.p95_latency_s is not None
            and stable.p95_latency_s is not None
            and canary.p95_latency_s > stable.p95_latency_s * self.max_p95_latency_ratio
            and canary.p95_latency_s - stable.p95_latency_s > self.min_p95_latency_increase_s
        ):
            raise CanaryRegressed(
                f"p95 latency {canary.p95_latency_s:.3f} s over its last {canary.runs} runs "
                f"against stable's {stable.p95_latency_s:.3f} s over {stable.runs} "
                f"(allowed x{self.max_p95_latency_ratio:g} or "
                f"+{self.min_p95_latency_increase_s:g} s)"
            )


class Rollback(BaseModel):
    """What the automatic rollback did, shown on the policy."""

    model_config = ConfigDict(frozen=True)

    version: str
    at: datetime
    reason: str


class PolicySpec(BaseModel):
    """An agent's traffic policy as an admin writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stable: VersionName
    """The version that serves everyone the canary and the experiment do not."""
    canary: Canary | None = None
    experiment: Experiment | None = None
    shadow: Shadow | None = None
    rollback: RollbackRule = RollbackRule()
    """When the canary is switched off automatically."""

    def versions(self) -> set[str]:
        """Every version the policy names."""
        named = {self.stable}
        if self.canary is not None:
            named.add(self.canary.version)
        if self.experiment is not None:
            named.update(v.version for v in self.experiment.variants)
        if self.shadow is not None:
            named.add(self.shadow.version)
        return named

    def live_canary(self) -> Canary | None:
        """The canary when it takes traffic."""
        return self.canary if self.canary is not None and self.canary.weight > 0 else None


class TrafficPolicy(PolicySpec):
    """An agent's traffic policy as it is stored and in force."""

    last_rollback: Rollback | None = None
    """Set by the automatic rollback; kept until an admin sets a canary of another version."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which version serves one request, and why."""

    version: str
    experiment: str | None = None
    variant: str | None = None
    shadow_version: str | None = None
    """A shadow version that gets a copy of this request."""

    def event_data(self) -> dict[str, object]:
        """What `run.started` tells of the assignment (never the shadow: users do not see it)."""
        if self.experiment is None:
            return {}
        return {"experiment": self.experiment, "variant": self.variant}


def bucket(salt: str, user_id: str) -> float:
    """A user's stable position in [0, 1) for one salt (uniform over users)."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(policy: TrafficPolicy, *, agent: str, user_id: str, sample: float) -> Assignment:
    """The version that serves `user_id`'s request under `policy`. `sample` is a uniform
    draw in [0, 1) for this request alone: it decides whether a shadow copy is made."""
    shadow = policy.shadow
    shadow_version = shadow.version if shadow is not None and sample < shadow.rate else None
    canary = policy.live_canary()
    if canary is not None and bucket(f"canary:{agent}:{canary.version}", user_id) < canary.weight:
        return _with_shadow(Assignment(canary.version), shadow_version)
    experiment = policy.experiment
    if experiment is not None:
        point = bucket(experiment.name, user_id) * sum(v.weight for v in experiment.variants)
        chosen = experiment.variants[-1]
        for variant in experiment.variants:
            if point < variant.weight:
                chosen = variant
                break
            point -= variant.weight
        assignment = Assignment(chosen.version, experiment.name, chosen.name)
        return _with_shadow(assignment, shadow_version)
    return _with_shadow(Assignment(policy.stable), shadow_version)


def _with_shadow(assignment: Assignment, shadow_version: str | None) -> Assignment:
    """A request is not shadowed by the version that serves it."""
    if shadow_version is None or shadow_version == assignment.version:
        return assignment
    return Assignment(assignment.version, assignment.experiment, assignment.variant, shadow_version)
