"""The catalogue of agents and tools: built-ins plus an operator's own module."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.agents.builtin import BUILTIN_AGENTS
from app.agents.definition import Agent, AgentVersion
from app.tools.base import Tool, ToolRegistry
from app.tools.builtin import builtin_tools


class UnknownAgent(LookupError):
    """No agent (or version) of that name."""


@dataclass
class AgentRegistry:
    """Agents by name, each checked against the tool registry."""

    tools: ToolRegistry
    agents: dict[str, Agent] = field(default_factory=dict)

    def add(self, agent: Agent) -> None:
        if agent.name in self.agents:
            raise ValueError(f"agent {agent.name!r} is registered twice")
        for version in agent.versions:
            missing = [t for t in version.tools if self.tools.get(t) is None]
            if missing:
                raise ValueError(
                    f"agent {agent.name!r} version {version.version!r} lists unknown tools: "
                    + ", ".join(missing)
                )
        self.agents[agent.name] = agent

    def resolve(self, name: str, version: str | None = None) -> tuple[Agent, AgentVersion]:
        """The agent and the version that serves it (the stable one unless named)."""
        agent = self.agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownAgent(f"unknown agent {name!r} (known: {known})")
        try:
            return agent, agent.version(version)
        except KeyError:
            raise UnknownAgent(f"agent {name!r} has no version {version!r}") from None


def build_registry(agents_module: str | None = None) -> AgentRegistry:
    """Built-in agents and tools, plus `AGENTS` and `TOOLS` from `agents_module` if set."""
    tools = ToolRegistry()
    extra_agents: Iterable[Agent] = ()
    extra_tools: Iterable[Tool] = ()
    if agents_module:
        module = importlib.import_module(agents_module)
        extra_agents = getattr(module, "AGENTS", ())
        extra_tools = getattr(module, "TOOLS", ())
    for tool in [*builtin_tools(), *extra_tools]:
        tools.add(tool)
    registry = AgentRegistry(tools=tools)
    for agent in [*BUILTIN_AGENTS, *extra_agents]:
        registry.add(agent)
    return registry
