"""A second agent for the feedback tests (AGENTSVC_AGENTS_MODULE): the offline model, and
its output filter off, so comments on its runs are shown as written."""

from __future__ import annotations

from app.agents.definition import Agent, AgentVersion

AGENTS = [
    Agent(
        name="diary",
        description="Answers like the assistant; filters nothing.",
        stable="3",
        versions=(
            AgentVersion(
                version="3",
                instructions="Answer briefly.",
                tools=("calculator",),
                redact=frozenset(),
            ),
        ),
    )
]
