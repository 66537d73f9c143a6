"""Waiting on events with a timeout, without cancelling work that is half done.

Loops that touch the database stop by checking an event between iterations rather
than by being cancelled mid-query (a cancelled driver call can outlive its loop).
"""

from __future__ import annotations

import asyncio


async def wait_any(timeout_s: float, *events: asyncio.Event) -> None:
    """Return when any event is set, or after `timeout_s`."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
