"""Pinned prices of the models we know, in USD per million tokens.

The table is code, not fetched: a price change is a reviewed diff, and the
unit tests check magnitudes (price tables elsewhere have been off by 100,000x).
Names match exactly first, then by the longest known prefix, so a dated
snapshot (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) prices like its family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.llm.types import TokenUsage

FREE_PROVIDERS = frozenset({"local"})
"""Providers whose every model costs nothing and counts as priced."""

_PER_MILLION = 1_000_000


@dataclass(frozen=True, kw_only=True)
class ModelPrice:
    """USD per million tokens of one model."""

    input: float
    output: float
    cached_input: float
    """Input read from the prompt cache."""
    cache_write: float | None = None
    """Input written to the prompt cache; None bills it at the `input` rate."""


@dataclass(frozen=True)
class Cost:
    """What one call cost. `priced` is False when the model is not in the table."""

    usd: float
    priced: bool


# Pinned from the providers' public price pages (2025). Anthropic bills 5-minute
# cache writes at 1.25x input and cache reads at 0.1x input.
PRICES: Mapping[str, ModelPrice] = {
    # OpenAI
    "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40, cached_input=0.025),
    "o3": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    # Listed so the `o3` prefix does not price them like o3.
    "o3-mini": ModelPrice(input=1.10, output=4.40, cached_input=0.55),
    "o3-pro": ModelPrice(input=20.00, output=80.00, cached_input=20.00),
    "o4-mini": ModelPrice(input=1.10, output=4.40, cached_input=0.275),
    # Anthropic
    "claude-opus-4": ModelPrice(input=15.00, output=75.00, cached_input=1.50, cache_write=18.75),
    # Listed so the `claude-opus-4` prefix does not price it like Opus 4 / 4.1.
    "claude-opus-4-5": ModelPrice(input=5.00, output=25.00, cached_input=0.50, cache_write=6.25),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00, cached_input=0.30, cache_write=3.75),
    "claude-3-7-sonnet": ModelPrice(input=3.00, output=15.00, cached_input=0.30, cache_write=3.75),
    "claude-haiku-4-5": ModelPrice(input=1.00, output=5.00, cached_input=0.10, cache_write=1.25),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00, cached_input=0.08, cache_write=1.00),
    "claude-3-haiku": ModelPrice(input=0.25, output=1.25, cached_input=0.03, cache_write=0.30),
}


def find_price(model: str) -> ModelPrice | None:
    """The price of `model`: exact name, else the longest known prefix ending at a separator."""
    exact = PRICES.get(model)
    if exact is not None:
        return exact
    # The boundary check keeps `o3` from matching a hypothetical `o3x`.
    prefixes = [
        name for name in PRICES if model.startswith(name) and not model[len(name)].isalnum()
    ]
    return PRICES[max(prefixes, key=len)] if prefixes else None


def price_call(provider: str, model: str, usage: TokenUsage) -> Cost:
    """The USD cost of one call with `usage`; unknown models cost 0 with `priced=False`."""
    if provider in FREE_PROVIDERS:
        return Cost(0.0, priced=True)
    price = find_price(model)
    if price is None:
        return Cost(0.0, priced=False)
    uncached = max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    cache_write_rate = price.input if price.cache_write is None else price.cache_write
    usd = (
        uncached * price.input
        + usage.cached_tokens * price.cached_input
        + usage.cache_write_tokens * cache_write_rate
        + usage.output_tokens * price.output
    ) / _PER_MILLION
    return Cost(usd, priced=True)
