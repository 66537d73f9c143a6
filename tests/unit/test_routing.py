"""Model selection by task complexity: the default heuristic, an agent's own classifier."""

from __future__ import annotations

import pytest

from app.agents.routing import (
    ModelPolicy,
    Route,
    TierChoice,
    classify_by_heuristic,
    route_run,
)

POLICY = ModelPolicy(simple="openai/small", medium="openai/mid", complex="openai/big")
LONG_PROSE = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)  # 180 words


@pytest.mark.parametrize(
    "text",
    ["What is 17*23?", "hello", "What time is it in Asia/Tokyo?", "Translate 'bonjour'."],
)
def test_short_plain_requests_are_simple(text: str) -> None:
    choice = classify_by_heuristic(text)
    assert choice.tier == "simple"
    assert "no code, math or multi-step cue" in choice.reason


@pytest.mark.parametrize(
    ("text", "cue"),
    [
        ("Write a Python function that reverses a list.", "code ('Python')"),
        ("Prove that there are infinitely many primes.", "math ('Prove')"),
        ("Compare these two offers.", "multi-step ('Compare')"),
        ("Steps:\n1. buy milk\n2. buy eggs\n3. go home", "multi-step ('3.')"),
        (LONG_PROSE, "180 words"),
    ],
)
def test_one_cue_or_length_makes_a_request_medium(text: str, cue: str) -> None:
    choice = classify_by_heuristic(text)
    assert choice.tier == "medium"
    assert cue in choice.reason


@pytest.mark.parametrize(
    "text",
    [
        "Debug this:\n```\ndef f(x):\n    return x +\n```\nthen explain the fix step by step.",
        "Derive the integral of x^2, then prove the result step by step.",
        "Implement a parser in Rust. " + LONG_PROSE,
        " ".join(["word"] * 700) + " and finally summarise it",
    ],
)
def test_combined_cues_make_a_request_complex(text: str) -> None:
    choice = classify_by_heuristic(text)
    assert choice.tier == "complex"
    assert choice.reason.startswith("heuristic: ")


def test_reason_names_cues_but_never_quotes_the_text_between_them() -> None:
    choice = classify_by_heuristic("first send jane@example.com the report, then call her")
    assert "'first … then'" in choice.reason
    assert "jane" not in choice.reason


def test_heuristic_is_deterministic_and_linear_on_the_largest_input() -> None:
    hostile = "first " * 40_000  # 240,000 characters of starts that never end
    assert classify_by_heuristic(hostile) == classify_by_heuristic(hostile)
    assert classify_by_heuristic(hostile).tier == "medium"  # length only


def test_policy_routes_each_tier_to_its_model() -> None:
    assert route_run(POLICY, "hi", model="openai/default") == Route(
        model="openai/small", tier="simple", reason=classify_by_heuristic("hi").reason
    )
    assert route_run(POLICY, "Prove it.", model="openai/default").model == "openai/mid"
    assert route_run(POLICY, "Prove it step by step.", model="x/y").model == "openai/big"


def test_no_policy_keeps_the_version_model_and_records_nothing() -> None:
    route = route_run(None, "Prove it step by step.", model="openai/default")
    assert route == Route(model="openai/default")
    assert route.event_data() == {}


def test_agents_own_classifier_replaces_the_heuristic() -> None:
    def by_customer(text: str) -> TierChoice:
        if "enterprise" in text:
            return TierChoice(tier="complex", reason="enterprise customer")
        return TierChoice(tier="simple", reason="everyone else")

    policy = ModelPolicy(simple="a/1", medium="a/2", complex="a/3", classifier=by_customer)
    route = route_run(policy, "enterprise: hi", model="x/y")
    assert (route.model, route.tier, route.reason) == ("a/3", "complex", "enterprise customer")
    assert route.event_data() == {"routing": {"tier": "complex", "reason": "enterprise customer"}}
    assert route_run(policy, "Prove it step by step.", model="x/y").model == "a/1"


def test_a_failing_classifier_falls_back_to_the_heuristic() -> None:
    def broken(text: str) -> TierChoice:
        raise RuntimeError("model down")

    def confused(text: str) -> TierChoice:
        return TierChoice(tier="huge", reason="?")  # type: ignore[arg-type]

    for classifier, problem in ((broken, "RuntimeError: model down"), (confused, "'huge'")):
        policy = ModelPolicy(simple="a/1", medium="a/2", complex="a/3", classifier=classifier)
        route = route_run(policy, "Prove it.", model="x/y")
        assert route.tier == "medium"
        assert route.model == "a/2"
        assert route.reason is not None
        assert route.reason.startswith("own classifier failed (")
        assert problem in route.reason
        assert "math ('Prove')" in route.reason
