"""An operator's own agents module, loaded through AGENTSVC_AGENTS_MODULE."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from app.agents.definition import Agent, AgentVersion
from app.tools.base import Tool, ToolContext


class ShoutArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


async def shout(args: BaseModel, ctx: ToolContext) -> str:
    assert isinstance(args, ShoutArgs)
    return args.text.upper()


TOOLS = [Tool(name="shout", description="Upper-cases text.", args_model=ShoutArgs, fn=shout)]
AGENTS = [
    Agent(
        name="shouter",
        description="Answers in capitals.",
        stable="2",
        versions=(
            AgentVersion(version="1", instructions="old", tools=("shout",)),
            AgentVersion(version="2", instructions="Shout.", tools=("shout", "calculator")),
        ),
    )
]
