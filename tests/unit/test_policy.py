"""Traffic policy: the split between versions, stickiness, shadow sampling, the rollback
rule and what an admin may write."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from app.agents.policy import (
    Canary,
    CanaryRegressed,
    Experiment,
    PolicySpec,
    RollbackRule,
    Shadow,
    TrafficPolicy,
    Variant,
    VersionSample,
    assign,
    bucket,
)

USERS = [f"user-{i}" for i in range(20_000)]
# Binomial standard error at n = 20,000 is at most 0.0035: 0.015 is over four of them.
TOLERANCE = 0.015


def shares(policy: TrafficPolicy, key: str = "version") -> dict[str | None, float]:
    counts = Counter(getattr(assign(policy, agent="a", user_id=u, sample=0.99), key) for u in USERS)
    return {k: n / len(USERS) for k, n in counts.items()}


def test_without_canary_or_experiment_everyone_gets_stable() -> None:
    assert shares(TrafficPolicy(stable="1")) == {"1": 1.0}


@pytest.mark.parametrize("weight", [0.01, 0.1, 0.5, 0.9])
def test_the_canary_takes_its_weight_of_users(weight: float) -> None:
    policy = TrafficPolicy(stable="1", canary=Canary(version="2", weight=weight))
    assert shares(policy)["2"] == pytest.approx(weight, abs=TOLERANCE)


def test_a_canary_at_weight_zero_or_one_is_exact() -> None:
    off = TrafficPolicy(stable="1", canary=Canary(version="2", weight=0.0))
    on = TrafficPolicy(stable="1", canary=Canary(version="2", weight=1.0))
    assert shares(off) == {"1": 1.0}
    assert shares(on) == {"2": 1.0}


def test_experiment_variants_split_by_weight_and_are_recorded() -> None:
    experiment = Experiment(
        name="prompt-test",
        variants=[
            Variant(name="control", version="1", weight=3),
            Variant(name="terse", version="2", weight=1),
        ],
    )
    policy = TrafficPolicy(stable="1", experiment=experiment)
    split = shares(policy, "variant")
    assert split["control"] == pytest.approx(0.75, abs=TOLERANCE)
    assert split["terse"] == pytest.approx(0.25, abs=TOLERANCE)
    one = assign(policy, agent="a", user_id="user-1", sample=0.5)
    assert one.experiment == "prompt-test"
    assert one.version == {"control": "1", "terse": "2"}[str(one.variant)]


def test_assignment_is_sticky_per_user_and_depends_on_the_experiment_name() -> None:
    def variants(name: str) -> list[str | None]:
        policy = TrafficPolicy(
            stable="1",
            experiment=Experiment(
                name=name, variants=[Variant(name="a", version="1"), Variant(name="b", version="2")]
            ),
        )
        return [assign(policy, agent="x", user_id=u, sample=random.random()).variant for u in USERS]

    first, again, other = variants("e1"), variants("e1"), variants("e2")
    assert first == again
    # Another experiment reshuffles users: about half change sides.
    changed = sum(a != b for a, b in zip(first, other, strict=True)) / len(USERS)
    assert changed == pytest.approx(0.5, abs=TOLERANCE)


def test_canary_and_experiment_split_independently() -> None:
    policy = TrafficPolicy(
        stable="1",
        canary=Canary(version="3", weight=0.2),
        experiment=Experiment(
            name="e", variants=[Variant(name="a", version="1"), Variant(name="b", version="2")]
        ),
    )
    split = shares(policy)
    assert split["3"] == pytest.approx(0.2, abs=TOLERANCE)
    # Users outside the canary are split evenly by the experiment.
    assert split["1"] == pytest.approx(0.4, abs=TOLERANCE)
    assert split["2"] == pytest.approx(0.4, abs=TOLERANCE)
    canary_users = [
        u for u in USERS if assign(policy, agent="a", user_id=u, sample=1).version == "3"
    ]
    assert all(
        assign(policy, agent="a", user_id=u, sample=1).experiment is None for u in canary_users
    )


def test_bucket_is_uniform_and_stable() -> None:
    points = [bucket("salt", u) for u in USERS]
    assert all(0 <= p < 1 for p in points)
    assert sum(p < 0.25 for p in points) / len(points) == pytest.approx(0.25, abs=TOLERANCE)
    assert bucket("salt", "user-1") == bucket("salt", "user-1")


def test_shadow_is_drawn_per_request_and_never_shadows_itself() -> None:
    policy = TrafficPolicy(stable="1", shadow=Shadow(version="2", rate=0.3))
    draws = [assign(policy, agent="a", user_id="u", sample=random.random()) for _ in range(20_000)]
    shadowed = sum(d.shadow_version == "2" for d in draws) / len(draws)
    assert shadowed == pytest.approx(0.3, abs=TOLERANCE)
    assert {d.version for d in draws} == {"1"}
    served_by_shadow = TrafficPolicy(stable="2", shadow=Shadow(version="2", rate=1.0))
    assert assign(served_by_shadow, agent="a", user_id="u", sample=0.0).shadow_version is None


RULE = RollbackRule(
    min_runs=20,
    max_error_rate_increase=0.05,
    max_p95_latency_ratio=1.5,
    min_p95_latency_increase_s=1.0,
)


@pytest.mark.parametrize(
    ("canary", "stable", "why"),
    [
        (VersionSample(20, 3, 1.0), VersionSample(50, 2, 1.0), "error rate 15.0%"),
        (VersionSample(20, 0, 3.1), VersionSample(50, 0, 2.0), "p95 latency 3.100 s"),
    ],
)
def test_the_rule_rolls_back_a_regressed_canary(
    canary: VersionSample, stable: VersionSample, why: str
) -> None:
    with pytest.raises(CanaryRegressed, match=why):
        RULE.check(canary, stable)


@pytest.mark.parametrize(
    ("canary", "stable"),
    [
        (VersionSample(19, 19, 9.0), VersionSample(50, 0, 1.0)),  # too few runs to judge
        (VersionSample(20, 2, 1.0), VersionSample(50, 3, 1.0)),  # within the margin
        (VersionSample(20, 0, 2.9), VersionSample(50, 0, 2.0)),  # latency within the ratio
        (VersionSample(20, 0, 0.034), VersionSample(50, 0, 0.020)),  # x1.7 but 14 ms: noise
        (VersionSample(20, 0, 1.9), VersionSample(50, 0, 1.0)),  # x1.9 but only +0.9 s
        (VersionSample(20, 0, 9.0), VersionSample(5, 0, 1.0)),  # stable too small for latency
    ],
)
def test_the_rule_keeps_a_healthy_or_unjudged_canary(
    canary: VersionSample, stable: VersionSample
) -> None:
    RULE.check(canary, stable)


@pytest.mark.parametrize(
    "body",
    [
        {"stable": "1", "canary": {"version": "2", "weight": 1.5}},
        {"stable": "1", "shadow": {"version": "2", "rate": -0.1}},
        {"stable": "1", "experiment": {"name": "e", "variants": [{"name": "a", "version": "1"}]}},
        {
            "stable": "1",
            "experiment": {
                "name": "e",
                "variants": [{"name": "a", "version": "1"}, {"name": "a", "version": "2"}],
            },
        },
        {
            "stable": "1",
            "last_rollback": {"version": "2", "at": "2026-01-01T00:00:00Z", "reason": "x"},
        },
        {"stable": ""},
        {"stable": "1", "surprise": True},
    ],
)
def test_what_an_admin_may_not_write(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PolicySpec.model_validate(body)


def test_versions_named_by_a_policy() -> None:
    policy = PolicySpec(
        stable="1",
        canary=Canary(version="2", weight=0.1),
        experiment=Experiment(
            name="e", variants=[Variant(name="a", version="1"), Variant(name="b", version="4")]
        ),
        shadow=Shadow(version="5", rate=0.1),
    )
    assert policy.versions() == {"1", "2", "4", "5"}
