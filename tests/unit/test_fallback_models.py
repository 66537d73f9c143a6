"""Which models may answer a version's calls: what the run's cost cap is held against."""

from __future__ import annotations

from app.agents.registry import build_registry
from app.jobs.resilience import fallback_models

AGENTS = "tests.support.resilience_agents"


def test_fallback_models_are_the_versions_then_the_fallback_agents() -> None:
    registry = build_registry(AGENTS)
    _, sturdy = registry.resolve("sturdy")
    _, plain = registry.resolve("plain")
    assert fallback_models(registry, sturdy, default_model="local/local-1") == (
        "openai/backup",
        "openai/simple",
    )
    assert fallback_models(registry, plain, default_model="local/local-1") == ()
