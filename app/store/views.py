"""A run as its answers show it: the row, its pending approvals, its webhook state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.store.approvals import ApprovalRecord
from app.store.runs import RunRecord
from app.store.webhooks import Delivery


@dataclass(frozen=True, slots=True)
class RunView:
    run: RunRecord
    approvals: list[ApprovalRecord]
    webhook: Delivery | None


WebhookRenderer = Callable[[str, RunView], str]
"""Renders a webhook body for an event type and the run as it is in that transaction."""
