"""Is a tool call allowed? Allowlist, schema validation and risk, as one decision.

The allowlist is the server's: whatever the model (or a tool's output) says,
a name that is not on the agent's list is never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ValidationError

from app.llm.types import ToolCall
from app.tools.base import Risk, Tool, ToolRegistry


@dataclass(frozen=True, slots=True)
class Allow:
    tool: Tool
    args: BaseModel


@dataclass(frozen=True, slots=True)
class Reject:
    status: Literal["refused", "invalid"]
    message: str


@dataclass(frozen=True, slots=True)
class RequireApproval:
    tool: Tool
    args: BaseModel


ToolDecision = Allow | Reject | RequireApproval


def check_tool_call(
    call: ToolCall, *, allowed: frozenset[str], registry: ToolRegistry
) -> ToolDecision:
    """Decide whether `call` may run now, needs approval, or is refused."""
    tool = registry.get(call.name) if call.name in allowed else None
    if tool is None:
        names = ", ".join(sorted(allowed)) or "none"
        return Reject(
            "refused", f"tool {call.name!r} is not available to this agent (available: {names})"
        )
    if call.raw_arguments is not None:
        return Reject("invalid", f"arguments of {call.name} must be a JSON object")
    try:
        args = tool.args_model.model_validate(call.arguments)
    except ValidationError as exc:
        return Reject("invalid", f"invalid arguments for {call.name}: {describe_errors(exc)}")
    if tool.risk is Risk.HIGH:
        return RequireApproval(tool, args)
    return Allow(tool, args)


def describe_errors(exc: ValidationError) -> str:
    """One line per problem: `field: message`."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
