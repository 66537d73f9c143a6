"""Waiting in tests for something another task or process does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T]], what: str = "condition", *, timeout_s: float = 20.0
) -> T:
    """Poll `check` until it answers something truthy, and return that; fail the test after
    `timeout_s` (generous: this is a deadline for a hang, not a performance assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
