"""Agents for the prompt cache and model routing tests (AGENTSVC_AGENTS_MODULE)."""

from __future__ import annotations

from app.agents.definition import Agent, AgentVersion
from app.agents.routing import ModelPolicy, TierChoice

MODEL = "openai/gpt-4o-mini"


def _agent(name: str, **version: object) -> Agent:
    settings: dict[str, object] = {"model": MODEL, "tools": ("calculator",), **version}
    return Agent(
        name=name,
        description=f"{name}, for tests",
        stable="1",
        versions=(AgentVersion(version="1", instructions="Be brief.", **settings),),  # type: ignore[arg-type]
    )


def by_customer(text: str) -> TierChoice:
    """An agent's own classifier: the customer's plan decides, not the text."""
    if text.startswith("[enterprise]"):
        return TierChoice(tier="complex", reason="enterprise customer")
    return TierChoice(tier="simple", reason="self-service customer")


AGENTS = [
    _agent("cached", temperature=0),
    _agent("shared", temperature=0, cache_scope="agent"),
    _agent("uncached", temperature=0, cache_ttl_s=0),
    _agent("default-temperature"),
    _agent("warm", temperature=0.7),
    _agent(
        "routed",
        model_policy=ModelPolicy(
            simple="openai/small-model", medium="openai/mid-model", complex="openai/big-model"
        ),
    ),
    _agent(
        "routed-own",
        model_policy=ModelPolicy(
            simple="openai/small-model",
            medium="openai/mid-model",
            complex="openai/big-model",
            classifier=by_customer,
        ),
    ),
]
