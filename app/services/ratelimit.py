"""Requests per minute per API key (`AGENTSVC_RATE_LIMIT_PER_MINUTE`), checked with the key.

None: no limit; 0: every request refused; N: GCRA (`app.bus.ratelimit`), N at once and then
one every 60/N seconds. A refused request answers 429 with `Retry-After`. Redis down: the
request goes through (fail open: a rate limit protects capacity, and the budgets still guard
spend), counted in `agentsvc_rate_limit_store_errors`.
"""

from __future__ import annotations

import logging
import math

from app.bus.ratelimit import RateLimiter, RateStoreError
from app.errors import TooManyRequests
from app.observability.metrics import RATE_LIMIT_STORE_ERRORS, RATE_LIMITED
from app.services.auth import Principal

log = logging.getLogger(__name__)


class RateLimit:
    """The rate limit of every authenticated request."""

    def __init__(self, limiter: RateLimiter, *, per_minute: int | None) -> None:
        self._limiter = limiter
        self._per_minute = per_minute

    async def check(self, principal: Principal) -> None:
        """Count a request of the principal's key; raise `TooManyRequests` over the limit."""
        per_minute = self._per_minute
        if per_minute is None:
            return
        if per_minute == 0:
            RATE_LIMITED.inc()
            raise TooManyRequests("requests are refused: the rate limit is 0", retry_after_s=60)
        try:
            wait = await self._limiter.acquire(principal.key_id, per_minute=per_minute)
        except RateStoreError as exc:
            RATE_LIMIT_STORE_ERRORS.inc()
            log.warning("rate limit not checked (letting the request through): %s", exc)
            return
        if wait > 0:
            RATE_LIMITED.inc()
            seconds = math.ceil(wait)
            raise TooManyRequests(
                f"rate limit of {per_minute} requests per minute for this API key reached; "
                f"retry in {seconds} s",
                retry_after_s=seconds,
            )
