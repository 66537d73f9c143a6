"""Shadow runs: a sampled copy of live requests, run by a shadow version in the background.

The traffic policy marks a live run for shadowing when it is created
(`runs.shadow_version`). Once the live run has ended, queue maintenance queues its shadow
run, in the transaction that clears the mark: the shadow starts with the live run's
conversation and input, waits behind live runs in the queue, has no webhook and no session,
never counts against the user's budget, is invisible to the user, and answers its tools'
side effects from the live run's recorded results (app/runner/shadow.py). A cancelled live
run is not shadowed: the user changed their mind.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from app.agents.registry import UnknownAgent
from app.agents.routing import route_run
from app.jobs.runtime import Runtime
from app.llm.types import Message
from app.runner.events import RunEvent
from app.runner.loop import start_run
from app.runner.state import Checkpoint
from app.store import queue
from app.store.runs import NewRun, RunRecord, insert_run

log = logging.getLogger(__name__)

SHADOW_PRIORITY = -1
"""Below every live run (priority 0): shadows use spare capacity."""


async def queue_due_shadows(rt: Runtime) -> int:
    """Queue the shadow runs of live runs that have ended; how many were queued."""
    queued = 0
    async with rt.db.transaction() as conn:
        for live in await queue.take_shadow_due(conn):
            shadow = _shadow_of(rt, live)
            if shadow is None:
                continue
            run, checkpoint, started = shadow
            await insert_run(conn, run, checkpoint=checkpoint, events=[started])
            queued += 1
        if queued:
            await queue.notify(conn, queue.READY_CHANNEL)
    if queued:
        rt.wakeups.ready()
    return queued


def _shadow_of(rt: Runtime, live: RunRecord) -> tuple[NewRun, Checkpoint, RunEvent] | None:
    if live.status == "cancelled" or live.shadow_version is None:
        return None
    try:
        _, version = rt.registry.resolve(live.agent, live.shadow_version)
    except UnknownAgent as exc:
        log.warning("run %s: shadow not queued: %s", live.id, exc)
        return None
    route = route_run(
        version.model_policy, live.input, model=version.model or rt.settings.default_model
    )
    run_id = uuid.uuid4()
    run = NewRun(
        id=run_id,
        user_id=live.user_id,
        agent=live.agent,
        agent_version=version.version,
        model=route.model,
        pattern="shadow",
        status="pending",
        input=live.input,
        metadata={},
        max_turns=min(live.max_turns, version.max_turns),
        timeout_s=min(live.timeout_s, version.timeout_s),
        created_at=datetime.now(UTC),
        history_len=live.history_len,
        model_tier=route.tier,
        model_reason=route.reason,
        shadow_of=live.id,
        priority=SHADOW_PRIORITY,
    )
    checkpoint, started = start_run(
        run_id=str(run_id),
        instructions=version.instructions,
        user_input=live.input,
        data={
            "agent": live.agent,
            "agent_version": version.version,
            "model": route.model,
            "shadow_of": str(live.id),
            **route.event_data(),
        },
        history=_history(live),
    )
    return run, checkpoint, started


def _history(live: RunRecord) -> list[Message]:
    """The session conversation the live run started from (its system message left out)."""
    if live.history_len == 0 or live.checkpoint is None:
        return []
    messages = Checkpoint.model_validate(live.checkpoint).messages
    conversation = [m for m in messages if m.role != "system"]
    return conversation[: live.history_len]
