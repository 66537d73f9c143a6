"""`current_time`: the current date and time in an IANA time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from app.tools.base import Risk, Tool, ToolContext, ToolFailure


class CurrentTimeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone name, e.g. 'UTC', 'Europe/Paris' or 'America/New_York'.",
    )


def load_zone(name: str) -> ZoneInfo:
    """The zone called `name`, or `ToolFailure` when there is none."""
    try:
        # zoneinfo reads a small tz file once and caches it, so this stays in the loop.
        return ZoneInfo(name)
    # ValueError: malformed keys such as absolute paths; OSError: keys naming a
    # folder of the tz database, e.g. "Europe".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolFailure(
            f"unknown time zone: {name!r} (use an IANA name such as 'Europe/Paris')"
        ) from None


async def current_time(args: BaseModel, ctx: ToolContext) -> str:
    """Now in the requested zone, ISO 8601 with its UTC offset, to the second."""
    if not isinstance(args, CurrentTimeArgs):
        raise TypeError(f"current_time got {type(args).__name__}, not CurrentTimeArgs")
    return datetime.now(load_zone(args.timezone)).isoformat(timespec="seconds")


CURRENT_TIME = Tool(
    name="current_time",
    description=(
        "Get the current date and time, as ISO 8601 with the UTC offset"
        " (e.g. 2025-01-31T14:05:09+01:00). Pass an IANA time zone name; the default is UTC."
    ),
    args_model=CurrentTimeArgs,
    fn=current_time,
    risk=Risk.LOW,
    idempotent=True,
    read_only=True,
    timeout_s=2.0,
)
