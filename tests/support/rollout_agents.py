"""Agents with several versions for the rollout tests, and a tool with a side effect."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from app.agents.definition import Agent, AgentVersion
from app.tools.base import Risk, Tool, ToolContext


class NoteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def note(args: BaseModel, ctx: ToolContext) -> str:
    """Appends a line to notes.txt in the sandbox: a side effect a shadow must not repeat."""
    assert isinstance(args, NoteArgs)
    ctx.sandbox_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.sandbox_dir / "notes.txt").open("a") as notes:
        notes.write(args.text + "\n")
    return f"noted {args.text}"


async def peek(args: BaseModel, ctx: ToolContext) -> str:
    path = ctx.sandbox_dir / "notes.txt"
    return path.read_text() if path.exists() else "(no notes)"


TOOLS = [
    Tool(
        name="note",
        description="Writes a note down.",
        args_model=NoteArgs,
        fn=note,
        risk=Risk.LOW,
        idempotent=False,
        read_only=False,
    ),
    Tool(
        name="peek",
        description="Reads the notes.",
        args_model=NoArgs,
        fn=peek,
        risk=Risk.LOW,
        read_only=True,
    ),
]
_TOOLS = ("calculator", "note", "peek")
AGENTS = [
    Agent(
        name="rollout",
        description="An agent in the middle of a rollout.",
        stable="1",
        versions=(
            AgentVersion(version="1", instructions="Version one.", tools=_TOOLS),
            AgentVersion(version="2", instructions="Version two.", tools=_TOOLS),
            AgentVersion(
                version="3-short",
                instructions="Version three, cut short.",
                tools=_TOOLS,
                max_turns=1,
            ),
        ),
    )
]
