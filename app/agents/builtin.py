"""The built-in `assistant` agent that uses the example tools."""

from __future__ import annotations

from app.agents.definition import Agent, AgentVersion

ASSISTANT = Agent(
    name="assistant",
    description="A general assistant with a calculator, a clock, sandboxed files and HTTP GET.",
    stable="1",
    versions=(
        AgentVersion(
            version="1",
            instructions=(
                "You are a careful assistant. Use the calculator for arithmetic instead of "
                "computing in your head, and the other tools when the user asks for the time, "
                "files or web pages. Answer briefly."
            ),
            tools=(
                "calculator",
                "current_time",
                "read_file",
                "write_file",
                "delete_file",
                "http_get",
            ),
            max_turns=8,
            timeout_s=120.0,
        ),
    ),
)

BUILTIN_AGENTS = (ASSISTANT,)
