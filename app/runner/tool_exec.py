"""Running one validated tool call under its timeout; failures become results."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from pydantic import BaseModel

from app.runner.protocols import ToolStatus
from app.tools.base import Tool, ToolContext, ToolFailure

log = logging.getLogger(__name__)

IN_DOUBT = (
    "the earlier call to {name} was interrupted; it may or may not have taken effect "
    "and was not repeated"
)
DENIED = "a human approver denied running {name}{reason}; it was not run"
EXPIRED = "nobody approved running {name} in time; it was not run"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    status: ToolStatus
    text: str
    latency_ms: float
    hit_deadline: bool = False
    """The run's own deadline, not the tool's timeout, cut the call short."""


async def execute_tool(
    tool: Tool, args: BaseModel, ctx: ToolContext, *, timeout_s: float, run_timeout: bool
) -> ToolOutcome:
    """Run `tool`; a ToolFailure, a timeout or a crash becomes an error result for the model.

    `run_timeout` says that `timeout_s` is the run's remaining time rather than the tool's own.
    """
    started = time.monotonic()
    status: ToolStatus = "ok"
    try:
        async with asyncio.timeout(timeout_s):
            text = await tool.fn(args, ctx)
    except ToolFailure as exc:
        status, text = "error", str(exc)
    except TimeoutError:
        status, text = "error", f"{tool.name} timed out after {timeout_s:g} s"
        latency = (time.monotonic() - started) * 1000
        return ToolOutcome(status, text, latency, hit_deadline=run_timeout)
    except Exception as exc:
        log.exception("tool %s crashed", tool.name)
        status, text = "error", f"{tool.name} failed unexpectedly ({type(exc).__name__})"
    if len(text) > tool.max_result_chars:
        text = text[: tool.max_result_chars] + "\n[truncated]"
    return ToolOutcome(status, storable(text), (time.monotonic() - started) * 1000)


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as the database can keep it: NUL characters (PostgreSQL's text and JSONB refuse
    them) and lone surrogates (not UTF-8) become U+FFFD. A tool may read any bytes."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text
