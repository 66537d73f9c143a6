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
    """Claims due deliveries and sends them, up to `batch` at once, each on its own: a
    receiver that never answers holds one slot for its timeout, never the others. Many
    dispatchers may share one outbox."""

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
        self._sending: set[asyncio.Task[None]] = set()

    async def deliver_due(self) -> int:
        """Start sending the deliveries due now, as many as free slots allow; the number
        started (0 when none is due or every slot is busy)."""
        free = self._batch - len(self._sending)
        if free <= 0:
            return 0
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            due = await webhooks.claim_due(conn, now=now, limit=free, lock_s=self._timeout_s * 3)
        for delivery in due:
            task = asyncio.create_task(self._attempt_logged(delivery))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return len(due)

    async def stop_sending(self) -> None:
        """Abandon the attempts under way (the process is stopping): each stays pending and
        is sent again, with the same webhook-id, once its claim lapses."""
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _attempt_logged(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except Exception:
            # Its claim lapses and another attempt follows (the row is still pending).
            log.warning("webhook %s: attempt failed", delivery.id, exc_info=True)

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
