"""Delivers the webhook outbox: signed, retried on a schedule, visible on the run."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta

import httpx

from app.api.schemas import RunRead
from app.jobs.webhook_delivery import RetrySchedule, render_body, send_webhook
from app.observability.metrics import WEBHOOK_DELIVERIES
from app.store import webhooks
from app.store.db import Database
from app.store.views import RunView
from app.store.webhooks import Delivery

log = logging.getLogger(__name__)


def render_webhook(event_type: str, view: RunView) -> str:
    """The Standard Webhooks body `{type, timestamp, data: Run}` for the run as it is now."""
    data = RunRead.from_view(view).model_dump(mode="json")
    return render_body(event_type, datetime.now(UTC), data).decode()


class WebhookDispatcher:
    """Claims due deliveries and sends them; many dispatchers may share one outbox."""

    def __init__(
        self,
        db: Database,
        client: httpx.AsyncClient,
        *,
        secret: str,
        schedule: RetrySchedule,
        timeout_s: float,
        batch: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._client = client
        self._secret = secret
        self._schedule = schedule
        self._timeout_s = timeout_s
        self._batch = batch
        self._rng = rng or random.Random()

    async def deliver_due(self) -> int:
        """Send every delivery that is due now; the number attempted."""
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            due = await webhooks.claim_due(
                conn, now=now, limit=self._batch, lock_s=self._timeout_s * 3
            )
        await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt(self, delivery: Delivery) -> None:
        body = delivery.body
        result = await send_webhook(
            self._client,
            url=delivery.url,
            msg_id=f"msg_{delivery.id.hex}",
            body=body.encode(),
            secret=self._secret,
            timeout_s=self._timeout_s,
        )
        attempts = delivery.attempts + 1
        now = datetime.now(UTC)
        next_at = None
        if result.ok:
            status = "delivered"
        elif result.gone:
            status = "failed"
        else:
            delay = self._schedule.next_delay(
                attempts, retry_after_s=result.retry_after_s, rng=self._rng
            )
            status = "failed" if delay is None else "pending"
            next_at = None if delay is None else now + timedelta(seconds=delay)
        WEBHOOK_DELIVERIES.labels("retry" if status == "pending" else status).inc()
        if not result.ok:
            log.info("webhook %s attempt %d failed: %s", delivery.id, attempts, result.error)
        async with self._db.transaction() as conn:
            await webhooks.record_attempt(
                conn,
                delivery.id,
                status=status,
                status_code=result.status_code,
                error=result.error,
                next_attempt_at=next_at,
                now=now,
            )
