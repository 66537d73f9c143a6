"""The queue worker: claims runs into free slots, reaps dead workers' runs, expires
approvals and delivers webhooks. `agentsvc worker` runs one; `serve` embeds one."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta

from app.jobs.executor import RunExecutor
from app.jobs.waiting import wait_any
from app.jobs.webhooks import WebhookDispatcher, render_webhook
from app.observability.metrics import RETENTION_DELETED
from app.observability.recording import observe_claims, observe_queue
from app.services import approvals as approval_service
from app.services.canary import check_canaries
from app.services.shadows import queue_due_shadows
from app.store import queue, retention

log = logging.getLogger(__name__)

CLAIM_STAGGER_S = 0.004
"""The most a worker waits after a ready signal when other workers claim too."""
RETENTION_BATCH = 500
"""The most runs, and sessions, one maintenance pass deletes (short transactions)."""


class Worker:
    """Keeps up to `capacity` runs going in its executor."""

    def __init__(
        self,
        executor: RunExecutor,
        *,
        capacity: int,
        dispatcher: WebhookDispatcher | None = None,
    ) -> None:
        self._executor = executor
        self._rt = executor.rt
        self._capacity = capacity
        self._dispatcher = dispatcher
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Work until `stopping` is set; then stop claiming (held runs are the executor's)."""
        loops = [self._claim_loop(), self._maintenance_loop()]
        if self._dispatcher is not None:
            loops.append(self._delivery_loop(self._dispatcher))
        await asyncio.gather(*loops)

    async def claim_once(self) -> bool:
        """Claim runs for the free slots and start them. True when every slot asked for was
        filled, so more runs may be waiting; False when the queue ran dry (or no slot)."""
        free = self._capacity - self._executor.active
        if free <= 0:
            return False
        self._rt.wakeups.claim_begins()
        settings = self._rt.settings
        now = datetime.now(UTC)
        claimed = await queue.claim_runs(
            self._rt.db,
            owner=self._executor.owner,
            lease_s=settings.lease_seconds,
            limit=free,
            now=now,
        )
        observe_claims(claimed, now=now)
        for run in claimed:
            await self._executor.start_claimed(run)
        return len(claimed) == free

    async def _claim_loop(self) -> None:
        poll_s = self._rt.settings.poll_interval_s
        ready = self._rt.wakeups.ready_event
        signalled = False  # woken by a ready signal (not by the poll or a freed slot)
        while not self.stopping.is_set():
            ready.clear()
            more = False
            if not signalled or await self._worth_claiming():
                try:
                    more = await self.claim_once()
                except Exception:
                    log.warning("claiming runs failed", exc_info=True)
            signalled = False
            if more and self._executor.active < self._capacity:
                continue  # slots freed meanwhile and the queue may hold more
            self._executor.slot_freed.clear()
            if self._executor.active >= self._capacity:
                await wait_any(poll_s, self._executor.slot_freed, self.stopping)
            else:
                await wait_any(poll_s, ready, self.stopping)
                signalled = ready.is_set()

    async def _worth_claiming(self) -> bool:
        """After a ready signal: whether a claim may find a run no other claim took. When
        other workers claim from the queue too, first wait a random moment, so that one of
        them usually claims a new run and the rest hear it was taken (`app.bus.wakeups`)."""
        wakeups = self._rt.wakeups
        if wakeups.others_claim():
            await wait_any(random.uniform(0, CLAIM_STAGGER_S), self.stopping)
        return wakeups.may_have_work()

    async def maintain_once(self) -> None:
        """Re-queue runs whose worker died, end those that died too often, expire approvals,
        queue the shadow runs of live runs that ended, roll back regressed canaries, delete
        what is past the retention period; count the queue for the metrics."""
        settings = self._rt.settings
        async with self._rt.db.transaction() as conn:
            requeued = await queue.reap_expired(
                conn,
                now=datetime.now(UTC),
                max_attempts=settings.max_attempts,
                render_webhook=render_webhook,
            )
            if requeued:
                await queue.notify(conn, queue.READY_CHANNEL)
        if requeued:
            log.warning("re-queued %d runs whose worker stopped renewing its lease", len(requeued))
            self._rt.wakeups.ready()
        await approval_service.expire_due(self._rt)
        await queue_due_shadows(self._rt)
        await check_canaries(self._rt.db, self._executor.policies)
        if settings.retention_days is not None:
            await self._sweep(settings.retention_days)
        async with self._rt.db.read() as conn:
            depth, oldest = await queue.pending_summary(conn)
        observe_queue(depth, oldest, now=datetime.now(UTC))

    async def _sweep(self, retention_days: float) -> None:
        """Delete one batch of what is older than the retention period."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        async with self._rt.db.transaction() as conn:
            swept = await retention.delete_expired(conn, cutoff=cutoff, limit=RETENTION_BATCH)
        if swept.runs or swept.sessions:
            log.info("retention: deleted %d runs and %d sessions", swept.runs, swept.sessions)
            RETENTION_DELETED.labels("run").inc(swept.runs)
            RETENTION_DELETED.labels("session").inc(swept.sessions)

    async def _maintenance_loop(self) -> None:
        interval = min(self._rt.settings.lease_seconds / 3, 5.0)
        while not self.stopping.is_set():
            try:
                await self.maintain_once()
            except Exception:
                log.warning("queue maintenance failed", exc_info=True)
            await wait_any(interval, self.stopping)

    async def _delivery_loop(self, dispatcher: WebhookDispatcher) -> None:
        poll_s = self._rt.settings.poll_interval_s
        while not self.stopping.is_set():
            try:
                sent = await dispatcher.deliver_due()
            except Exception:
                log.warning("webhook delivery failed", exc_info=True)
                sent = 0
            if not sent:
                await wait_any(poll_s, self.stopping)
        await dispatcher.stop_sending()
