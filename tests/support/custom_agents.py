"""An operator's own agents module, loaded through AGENTSVC_AGENTS_MODULE."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from app.agents.definition import Agent, AgentVersion
from app.tools.base import Risk, Tool, ToolContext


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


class NapArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=30)


async def nap(args: BaseModel, ctx: ToolContext) -> str:
    assert isinstance(args, NapArgs)
    await asyncio.sleep(args.seconds)
    return f"slept {args.seconds:g} s"


class TallyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str


async def tally(args: BaseModel, ctx: ToolContext) -> str:
    """A side effect that must never happen twice: one line per execution."""
    assert isinstance(args, TallyArgs)
    ctx.sandbox_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.sandbox_dir / "tally.log").open("a") as log:
        log.write(f"{args.label} {ctx.idempotency_key}\n")
    return f"counted {args.label}"


TOOLS += [
    Tool(name="nap", description="Sleeps.", args_model=NapArgs, fn=nap, timeout_s=60),
    Tool(
        name="tally",
        description="Counts once.",
        args_model=TallyArgs,
        fn=tally,
        risk=Risk.MEDIUM,
        idempotent=False,
    ),
]
AGENTS += [
    Agent(
        name="worker-agent",
        description="Naps and tallies, for queue and crash tests.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="Do what the script says.",
                model="openai/gpt-4o-mini",
                tools=("nap", "tally", "calculator"),
                max_turns=20,
                timeout_s=300,
            ),
        ),
    )
]
