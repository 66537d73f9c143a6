"""Agents for the budget tests (AGENTSVC_AGENTS_MODULE): small, priced models."""

from __future__ import annotations

from app.agents.definition import Agent, AgentVersion

AGENTS = [
    Agent(
        name="frugal",
        description="One short call per run, for budget races.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="Answer.",
                model="openai/gpt-4o-mini",
                max_output_tokens=1000,
            ),
        ),
    ),
    Agent(
        name="capped",
        description="Declares its own per-run token and cost caps.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="Use the calculator.",
                model="openai/gpt-4o-mini",
                tools=("calculator",),
                max_output_tokens=100,
                max_run_tokens=5000,
                max_run_cost_usd=0.05,
            ),
        ),
    ),
]
