"""Agents with fallback chains and tools that fail on demand (AGENTSVC_AGENTS_MODULE)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from app.agents.definition import Agent, AgentVersion
from app.tools.base import Tool, ToolContext, ToolUnavailable


class FlakyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    fail_first: int = 0
    """Executions for this key that fail with ToolUnavailable before one succeeds."""


def _flaky(name: str) -> Tool:
    """A tool that logs each execution to `<sandbox>/<name>.log`, failing the first ones."""

    async def run(args: BaseModel, ctx: ToolContext) -> str:
        assert isinstance(args, FlakyArgs)
        ctx.sandbox_dir.mkdir(parents=True, exist_ok=True)
        log = ctx.sandbox_dir / f"{name}.log"
        done = log.read_text().splitlines().count(args.key) if log.exists() else 0
        with log.open("a") as out:
            out.write(args.key + "\n")
        if done < args.fail_first:
            raise ToolUnavailable(f"{name} backend refused the connection")
        return f"{name} {args.key} ok"

    return Tool(
        name=name,
        description=f"{name} something by key.",
        args_model=FlakyArgs,
        fn=run,
        idempotent=name == "lookup",
    )


TOOLS = [_flaky("lookup"), _flaky("post")]
AGENTS = [
    Agent(
        name="sturdy",
        description="Falls back to a second model, then to the plain agent.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="You are sturdy.",
                model="openai/primary",
                fallbacks=("openai/backup",),
                fallback_agent="plain",
                tools=("lookup", "calculator"),
            ),
        ),
    ),
    Agent(
        name="plain",
        description="The simple fallback agent.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="Answer plainly.",
                model="openai/simple",
                tools=("lookup", "post"),
            ),
        ),
    ),
    Agent(
        name="tooler",
        description="Calls the flaky tools; no fallbacks.",
        stable="1",
        versions=(
            AgentVersion(
                version="1",
                instructions="Use the tools.",
                model="openai/primary",
                tools=("lookup", "post"),
                max_turns=10,
            ),
        ),
    ),
]
