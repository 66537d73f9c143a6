"""Automatic canary rollback.

Queue maintenance (every worker, every few seconds) judges each live canary against its
agent's stable version by the policy's rollback rule, over each version's latest finished
live runs. A canary that is worse beyond the margins is switched off (weight 0) in a new
revision of the policy that records why; only the revision that was judged is changed, so
replicas judging at once, or an admin editing meanwhile, never undo each other. The event
is logged and counted in `agentsvc_canary_rollbacks_total{agent}`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from app.agents.policy import CanaryRegressed, Rollback, TrafficPolicy, VersionSample
from app.observability.metrics import CANARY_ROLLBACKS
from app.observability.stats import percentile
from app.services.rollouts import PolicyBook, PolicyState
from app.store import policies as policy_store
from app.store.db import Database

log = logging.getLogger(__name__)


async def check_canaries(db: Database, book: PolicyBook) -> list[str]:
    """Roll back every canary that regressed; the agents whose canary was switched off."""
    rolled_back = []
    for state in await book.states():
        canary = state.policy.live_canary()
        if canary is None or state.revision == 0 or canary.version == state.policy.stable:
            continue
        rule = state.policy.rollback
        async with db.read() as conn:
            canary_runs = await policy_store.latest_outcomes(
                conn, state.agent, canary.version, limit=rule.window_runs
            )
            stable_runs = await policy_store.latest_outcomes(
                conn, state.agent, state.policy.stable, limit=rule.window_runs
            )
        try:
            rule.check(_sample(canary_runs), _sample(stable_runs))
        except CanaryRegressed as exc:
            if await _switch_off(db, state, str(exc)):
                rolled_back.append(state.agent)
    if rolled_back:
        book.forget()
    return rolled_back


def _sample(outcomes: list[tuple[bool, float | None]]) -> VersionSample:
    latencies = [s for _, s in outcomes if s is not None]
    return VersionSample(
        runs=len(outcomes),
        failed=sum(failed for failed, _ in outcomes),
        p95_latency_s=percentile(latencies, 95) if latencies else None,
    )


async def _switch_off(db: Database, state: PolicyState, reason: str) -> bool:
    """Write the policy with the canary off, if it is still the revision judged."""
    canary = state.policy.canary
    assert canary is not None
    now = datetime.now(UTC)
    policy = TrafficPolicy.model_validate(
        {
            **state.policy.model_dump(mode="json"),
            "canary": {"version": canary.version, "weight": 0.0},
            "last_rollback": Rollback(version=canary.version, at=now, reason=reason).model_dump(
                mode="json"
            ),
        }
    )
    async with db.transaction() as conn:
        written = await policy_store.put_policy(
            conn,
            state.agent,
            policy.model_dump(mode="json"),
            now=now,
            by="rollback",
            expect_revision=state.revision,
        )
    if written is None:
        return False
    log.warning("agent %s: canary version %s rolled back: %s", state.agent, canary.version, reason)
    CANARY_ROLLBACKS.labels(state.agent).inc()
    return True
