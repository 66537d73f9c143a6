from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.tools.base import ToolContext, ToolFailure
from app.tools.clock import CURRENT_TIME


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"current_time made a request to {request.url}")


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_no_network)) as client:
        yield ToolContext(sandbox_dir=tmp_path, http=client)


async def current_time(ctx: ToolContext, **arguments: str) -> datetime:
    args = CURRENT_TIME.args_model.model_validate(arguments)
    return datetime.fromisoformat(await CURRENT_TIME.fn(args, ctx))


def assert_close_to_now(moment: datetime) -> None:
    # The tool prints whole seconds, so it may lag the clock by up to one second.
    assert abs(moment - datetime.now(UTC)) < timedelta(seconds=5)


async def test_defaults_to_utc(ctx: ToolContext) -> None:
    args = CURRENT_TIME.args_model.model_validate({})
    text = await CURRENT_TIME.fn(args, ctx)
    assert text.endswith("+00:00")
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0)
    assert moment.microsecond == 0
    assert_close_to_now(moment)


@pytest.mark.parametrize(
    ("zone", "offset"),
    [("Asia/Kolkata", timedelta(hours=5, minutes=30)), ("Etc/GMT+3", timedelta(hours=-3))],
)
async def test_fixed_offset_zones(zone: str, offset: timedelta, ctx: ToolContext) -> None:
    moment = await current_time(ctx, timezone=zone)
    assert moment.utcoffset() == offset
    assert_close_to_now(moment)


async def test_zone_with_daylight_saving(ctx: ToolContext) -> None:
    moment = await current_time(ctx, timezone="Europe/Paris")
    assert moment.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}
    assert_close_to_now(moment)


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "Europe", "/etc/localtime", "../../etc/passwd", "a\x00b"]
)
async def test_unknown_zones_are_refused(zone: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="unknown time zone"):
        await current_time(ctx, timezone=zone)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValidationError, match="at most 64 characters"):
        CURRENT_TIME.args_model.model_validate({"timezone": "A" * 65})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CURRENT_TIME.args_model.model_validate({"timezone": "UTC", "format": "unix"})


def test_declared_as_a_safe_tool() -> None:
    assert CURRENT_TIME.name == "current_time"
    assert (CURRENT_TIME.risk, CURRENT_TIME.idempotent, CURRENT_TIME.read_only) == (
        "low",
        True,
        True,
    )
