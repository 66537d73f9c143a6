"""Creating, reading, cancelling and tracing runs; the HTTP routes call these."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from app.agents.registry import UnknownAgent
from app.agents.routing import route_run
from app.api.schemas import RunCreate
from app.errors import Conflict, InvalidRequest, NotFound
from app.jobs.executor import RunExecutor
from app.jobs.runtime import build_spec
from app.jobs.ssrf import UnsafeURL, check_callback_url
from app.jobs.webhooks import render_webhook
from app.llm.types import Message
from app.runner.events import RunEvent
from app.runner.loop import start_run
from app.runner.state import Checkpoint
from app.services.auth import Principal
from app.services.idempotency import KeyTaken, replayed_run, request_digest
from app.store import approvals, idempotency, queue, webhooks
from app.store import runs as run_store
from app.store.db import is_unavailable
from app.store.runs import TERMINAL_STATUSES, NewRun, RunRecord
from app.store.views import RunView

SETTLED_POLL_S = 0.1
"""How often a sync request re-reads a run that another worker took over."""


@dataclass(frozen=True, slots=True)
class StartedRun:
    run_id: uuid.UUID
    task: asyncio.Task[RunRecord | None] | None
    """Set when this process drives the run (sync); None when it waits in the queue."""
    replayed: bool = False
    """An earlier submission with the same Idempotency-Key stored this run."""


def parse_id(value: str, what: str = "run") -> uuid.UUID:
    """An id from a path; one that is not a UUID is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value} not found") from None


async def owned_run(
    conn: AsyncConnection, principal: Principal, run_id: uuid.UUID, *, lock: bool = False
) -> RunRecord:
    run = await run_store.get_run(conn, run_id, principal.owner, lock=lock)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


class SessionTurn(Protocol):
    """The session a new run is the next message of (see services/sessions.py)."""

    @property
    def session_id(self) -> uuid.UUID: ...

    async def admit(self, conn: AsyncConnection) -> Sequence[Message]:
        """In the transaction that stores the run: lock the session, raise if it cannot take
        a message now, and return its conversation so far (no system messages)."""
        ...


async def create_run(
    executor: RunExecutor,
    principal: Principal,
    body: RunCreate,
    *,
    pattern: str,
    inline: bool,
    session: SessionTurn | None = None,
    idempotency_key: str | None = None,
) -> StartedRun:
    """Store a new run. Inline: this process takes its lease and drives it now; otherwise
    it waits in the queue for a worker. With `session`, the run continues the session's
    conversation, admitted and stored in one transaction (two messages never both start).
    With `idempotency_key`, a request the user already sent with that key gets the run it
    started (`replayed`), and another request with it a 422."""
    rt = executor.rt
    digest = "" if idempotency_key is None else request_digest(body)
    if idempotency_key is not None:
        replay = await _earlier_run(executor, principal, idempotency_key, digest)
        if replay is not None:
            return replay
    try:
        agent, _ = rt.registry.resolve(body.agent)
    except UnknownAgent as exc:
        raise InvalidRequest(str(exc)) from None
    # The traffic policy picks the version: stable, canary or an experiment's variant.
    assignment = await executor.policies.assign(agent.name, principal.user_id)
    version = agent.version(assignment.version)
    _check_limit("max_turns", body.max_turns, version.max_turns)
    _check_limit("timeout_s", body.timeout_s, version.timeout_s)
    # 429 with Retry-After while the user's token budget for the window is spent.
    await executor.budgets.check_open(principal.user_id)
    if body.webhook_url is not None:
        await _check_webhook(executor, body.webhook_url)
    max_turns = body.max_turns or version.max_turns
    timeout_s = body.timeout_s or version.timeout_s
    route = route_run(
        version.model_policy, body.input, model=version.model or rt.settings.default_model
    )
    model_ref = route.model
    run_id = uuid.uuid4()
    now = datetime.now(UTC)
    run = NewRun(
        id=run_id,
        user_id=principal.user_id,
        agent=agent.name,
        agent_version=version.version,
        model=model_ref,
        pattern=pattern,
        status="running" if inline else "pending",
        input=body.input,
        metadata=dict(body.metadata),
        max_turns=max_turns,
        timeout_s=timeout_s,
        created_at=now,
        started_at=now if inline else None,
        lease_owner=executor.owner if inline else None,
        lease_expires_at=now + timedelta(seconds=rt.settings.lease_seconds) if inline else None,
        attempt=1 if inline else 0,
        webhook_url=body.webhook_url,
        model_tier=route.tier,
        model_reason=route.reason,
        experiment=assignment.experiment,
        variant=assignment.variant,
        shadow_version=assignment.shadow_version,
    )

    def first_checkpoint(history: Sequence[Message] = ()) -> tuple[Checkpoint, RunEvent]:
        return start_run(
            run_id=str(run_id),
            instructions=version.instructions,
            user_input=body.input,
            data={
                "agent": agent.name,
                "agent_version": version.version,
                "model": model_ref,
                **assignment.event_data(),
                **route.event_data(),
            },
            history=history,
        )

    if session is None and idempotency_key is None:
        checkpoint, started = first_checkpoint()
        await queue.add_run(rt.db, run, checkpoint=checkpoint, events=[started])
    else:
        keyed = idempotency.KeyedRun(run_id, digest)
        try:
            async with rt.db.transaction() as conn:
                history = await session.admit(conn) if session is not None else []
                if session is not None:
                    run = replace(run, session_id=session.session_id, history_len=len(history))
                checkpoint, started = first_checkpoint(history)
                await run_store.insert_run(conn, run, checkpoint=checkpoint, events=[started])
                if idempotency_key is not None and not await idempotency.claim(
                    conn, user_id=principal.user_id, key=idempotency_key, run=keyed, now=now
                ):
                    raise KeyTaken  # rolls the run back
                if not inline:
                    await queue.notify(conn, queue.READY_CHANNEL)
        except KeyTaken:
            assert idempotency_key is not None
            replay = await _earlier_run(executor, principal, idempotency_key, digest)
            assert replay is not None  # the key's row committed before ours could not insert
            return replay
    if not inline:
        rt.wakeups.ready()
        return StartedRun(run_id, None)
    spec = build_spec(
        rt,
        run_id=str(run_id),
        agent=agent.name,
        version=version,
        model_ref=model_ref,
        max_turns=max_turns,
        timeout_s=timeout_s,
        stream=pattern == "stream",
    )
    task = executor.start(
        spec, checkpoint, attempt=1, user_id=principal.user_id, webhook_url=body.webhook_url
    )
    return StartedRun(run_id, task)


async def _earlier_run(
    executor: RunExecutor, principal: Principal, key: str, digest: str
) -> StartedRun | None:
    """The run an earlier request with the caller's `key` started (422 if it was another
    request), or None."""
    async with executor.rt.db.read() as conn:
        earlier = await idempotency.find(conn, user_id=principal.user_id, key=key)
    if earlier is None:
        return None
    return StartedRun(replayed_run(earlier, digest, key), None, replayed=True)


def _check_limit(name: str, asked: float | None, limit: float) -> None:
    """A request may lower an agent's limit, never raise it."""
    if asked is not None and asked > limit:
        raise InvalidRequest(f"{name} {asked:g} exceeds the agent's limit of {limit:g}")


async def _check_webhook(executor: RunExecutor, url: str) -> None:
    settings = executor.rt.settings
    if settings.webhook_secret is None:
        raise InvalidRequest("webhooks are not enabled here: AGENTSVC_WEBHOOK_SECRET is not set")
    try:
        async with asyncio.timeout(5):
            await check_callback_url(url, allowed_hosts=settings.webhook_allowed_hosts)
    except UnsafeURL as exc:
        raise InvalidRequest(f"webhook_url refused: {exc}") from None
    except TimeoutError:
        raise InvalidRequest("webhook_url refused: its host did not resolve in time") from None


async def wait_for_run(
    executor: RunExecutor, principal: Principal, started: StartedRun, timeout_s: float
) -> RunView:
    """The run after up to `timeout_s` of waiting for the task that drives it. A run that
    ended here without a webhook is answered from its final commit, without a read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    if started.replayed:  # started by an earlier request, wherever it runs now
        return await _settled(executor, principal, started.run_id, deadline)
    if started.task is not None:
        await asyncio.wait({started.task}, timeout=timeout_s)
        if started.task.done() and not started.task.cancelled():
            final = started.task.result()
            if final is None:
                # Handed back (the database went away) or lost: another claim goes on with it.
                return await _settled(executor, principal, started.run_id, deadline)
            if final.status in TERMINAL_STATUSES and final.webhook_url is None:
                return RunView(final, [], None)
    return await get_run(executor, principal, started.run_id)


async def _settled(
    executor: RunExecutor, principal: Principal, run_id: uuid.UUID, deadline: float
) -> RunView:
    """The run once it ends or waits for a human, or as it is at `deadline`."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            view = await get_run(executor, principal, run_id)
        except Exception as exc:
            if not is_unavailable(exc) or loop.time() >= deadline:
                raise
        else:
            if view.run.status not in ("pending", "running") or loop.time() >= deadline:
                return view
        await asyncio.sleep(min(SETTLED_POLL_S, max(0.0, deadline - loop.time())))


async def get_run(executor: RunExecutor, principal: Principal, run_id: uuid.UUID) -> RunView:
    """The run, if the caller may see it, with its pending approvals and webhook state."""
    async with executor.rt.db.transaction() as conn:
        return await load_view(conn, await owned_run(conn, principal, run_id))


async def load_view(conn: AsyncConnection, run: RunRecord) -> RunView:
    """What a Run answer shows besides the row: pending approvals, webhook state."""
    pending = (
        await approvals.list_pending(conn, run_id=run.id)
        if run.status == "awaiting_approval"
        else []
    )
    delivery = await webhooks.latest_for_run(conn, run.id) if run.webhook_url else None
    return RunView(run, pending, delivery)


async def cancel_run(executor: RunExecutor, principal: Principal, run_id: uuid.UUID) -> RunView:
    """Cancel: a queued or paused run at once, a running one at its next step boundary
    (its in-flight LLM call is aborted). A finished run is left as it is."""
    rt = executor.rt
    now = datetime.now(UTC)
    async with rt.db.transaction() as conn:
        # The run's lock before its approvals', as a decision takes them (services/approvals).
        run = await owned_run(conn, principal, run_id, lock=True)
        if run.status in ("pending", "awaiting_approval"):
            await approvals.cancel_pending(conn, run_id, now=now)
            await queue.finish_unowned(
                conn, run, status="cancelled", now=now, render_webhook=render_webhook
            )
        elif run.status == "running" and not run.cancel_requested:
            await queue.request_cancel(conn, run_id)
            await queue.notify(conn, queue.CANCEL_CHANNEL, str(run_id))
    rt.wakeups.cancel(str(run_id))
    return await get_run(executor, principal, run_id)


async def retry_webhook(executor: RunExecutor, principal: Principal, run_id: uuid.UUID) -> RunView:
    """Send the run's failed webhook deliveries again, with the same webhook-id."""
    async with executor.rt.db.transaction() as conn:
        await owned_run(conn, principal, run_id)
        if await webhooks.retry_failed(conn, run_id, now=datetime.now(UTC)) == 0:
            raise Conflict("the run has no failed webhook delivery to send again")
    return await get_run(executor, principal, run_id)
