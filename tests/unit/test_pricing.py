"""The pinned price table: magnitudes, prefix matching and the cost arithmetic."""

from __future__ import annotations

import pytest

from app.llm.pricing import PRICES, Cost, find_price, price_call
from app.llm.types import TokenUsage

MILLION = 1_000_000


def test_gpt_4o_mini_input_costs_cents_per_million() -> None:
    cost = price_call("openai", "gpt-4o-mini", TokenUsage(input_tokens=MILLION))
    assert cost.priced
    assert 0.05 < cost.usd < 1


def test_gpt_4o_output_costs_dollars_per_million() -> None:
    cost = price_call("openai", "gpt-4o", TokenUsage(output_tokens=MILLION))
    assert 5 < cost.usd < 20


def test_claude_sonnet_input_costs_dollars_per_million() -> None:
    cost = price_call("anthropic", "claude-sonnet-4-20250514", TokenUsage(input_tokens=MILLION))
    assert 1 <= cost.usd <= 5


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "claude-sonnet-4", "claude-3-5-haiku"])
def test_cached_input_is_cheaper_than_uncached(model: str) -> None:
    uncached = price_call("any", model, TokenUsage(input_tokens=MILLION))
    cached = price_call("any", model, TokenUsage(input_tokens=MILLION, cached_tokens=MILLION))
    assert 0 < cached.usd < uncached.usd


def test_anthropic_cache_writes_cost_more_than_input() -> None:
    plain = price_call("anthropic", "claude-sonnet-4", TokenUsage(input_tokens=MILLION))
    written = price_call(
        "anthropic",
        "claude-sonnet-4",
        TokenUsage(input_tokens=MILLION, cache_write_tokens=MILLION),
    )
    assert written.usd == pytest.approx(plain.usd * 1.25)


def test_cache_writes_default_to_the_input_rate() -> None:
    plain = price_call("openai", "gpt-4o", TokenUsage(input_tokens=1000))
    written = price_call("openai", "gpt-4o", TokenUsage(input_tokens=1000, cache_write_tokens=1000))
    assert written.usd == pytest.approx(plain.usd)


def test_mixed_usage_adds_each_part_at_its_rate() -> None:
    usage = TokenUsage(input_tokens=3000, cached_tokens=1000, output_tokens=500)
    expected = (2000 * 2.50 + 1000 * 1.25 + 500 * 10.00) / MILLION
    cost = price_call("openai", "gpt-4o", usage)
    assert cost.priced
    assert cost.usd == pytest.approx(expected)


@pytest.mark.parametrize(
    ("snapshot", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-opus-4-1-20250805", "claude-opus-4"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_dated_snapshots_price_like_their_family(snapshot: str, family: str) -> None:
    assert find_price(snapshot) == PRICES[family]


def test_prefix_must_end_at_a_separator() -> None:
    assert find_price("o3x") is None


def test_unknown_model_is_free_but_unpriced() -> None:
    usage = TokenUsage(input_tokens=MILLION, output_tokens=MILLION)
    assert price_call("openai", "meta-llama/Llama-3-8B", usage) == Cost(0.0, priced=False)


def test_local_models_cost_nothing_and_are_priced() -> None:
    usage = TokenUsage(input_tokens=MILLION, output_tokens=MILLION)
    assert price_call("local", "demo", usage) == Cost(0.0, priced=True)


@pytest.mark.parametrize("model", sorted(PRICES))
def test_every_price_has_a_sane_magnitude(model: str) -> None:
    price = PRICES[model]
    assert 0.01 <= price.input <= 30
    assert price.input <= price.output <= 100
    assert 0 < price.cached_input <= price.input
    assert price.cache_write is None or price.input <= price.cache_write <= 2 * price.input
