"""The runner's RunStore on SQL: every write fenced by (lease owner, attempt)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.observability.recording import observe_run_end, observe_step
from app.runner.errors import LeaseLost, StoreUnavailable
from app.runner.events import RunEvent
from app.runner.protocols import (
    TERMINAL_OUTCOMES,
    Cancelled,
    Completed,
    Failed,
    Outcome,
    Paused,
    Step,
    Suspended,
    ToolCallRecord,
)
from app.runner.state import Checkpoint
from app.store import approvals, pg_fast, queue, sessions, tool_sets, webhooks
from app.store.db import Database, is_unavailable
from app.store.pg_fast import json_text
from app.store.runs import (
    RunRecord,
    insert_events,
    llm_calls_t,
    record_from_row,
    runs,
    tool_calls_t,
)
from app.store.tool_sets import ToolSetMemory
from app.store.trace_rows import llm_call_row, tool_call_row, upsert_tool_call
from app.store.views import RunView, WebhookRenderer

# Built once (see runs.INSERT_RUN). The SET clause comes from the parameters given.
_INSERT_LLM_CALL = insert(llm_calls_t)
_INSERT_TOOL_CALL = insert(tool_calls_t)
_FENCED = update(runs).where(
    runs.c.id == bindparam("_run"),
    runs.c.lease_owner == bindparam("_owner"),
    runs.c.attempt == bindparam("_attempt"),
)
_FENCED_ROW = _FENCED.returning(*runs.c)
_FENCED_CANCEL = _FENCED.returning(runs.c.cancel_requested)
log = logging.getLogger(__name__)


class SqlRunStore:
    """Writes of the worker that holds a run's lease; a lost lease raises LeaseLost, a
    database out of reach StoreUnavailable."""

    def __init__(
        self,
        db: Database,
        *,
        run_id: str,
        user_id: str,
        owner: str,
        attempt: int,
        render_webhook: WebhookRenderer,
        webhook_url: str | None = None,
        approval_ttl_s: float = 3600.0,
        agent: str = "",
        allowed_tools: frozenset[str] = frozenset(),
        tool_sets: ToolSetMemory | None = None,
    ) -> None:
        """`agent` and `allowed_tools` label the metrics of the run's calls; `tool_sets`:
        the sets of tools this process has stored (shared by its runs)."""
        self._db = db
        self._run_id = uuid.UUID(run_id)
        self._user_id = user_id
        self._owner = owner
        self._attempt = attempt
        self._webhook_url = webhook_url
        self._render = render_webhook
        self.last_state: RunRecord | None = None
        """The run as this store's last state change left it."""
        self._approval_ttl = timedelta(seconds=approval_ttl_s)
        self._agent = agent
        self._allowed_tools = allowed_tools
        self._step_began = time.monotonic()
        self._tool_sets = ToolSetMemory() if tool_sets is None else tool_sets

    async def commit(self, step: Step) -> bool:
        with self._reachable():
            cancel = await self._write(step)
        await self._observe(step)
        return cancel

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if is_unavailable(exc):
                raise StoreUnavailable(f"run {self._run_id}: database unreachable: {exc}") from exc
            raise

    async def _observe(self, step: Step) -> None:
        """Metrics of a committed step, and of the run when it ended: recorded here because
        every step of every run a worker drives passes through, trace row and all."""
        began, self._step_began = self._step_began, time.monotonic()
        try:
            observe_step(
                step,
                agent=self._agent,
                allowed_tools=self._allowed_tools,
                service_s=self._step_began - began,
            )
            run = self.last_state
            if isinstance(step.outcome, TERMINAL_OUTCOMES) and run is not None:
                session_cost = None
                if run.session_id is not None:
                    async with self._db.read() as conn:
                        session_cost = await sessions.session_cost(conn, run.session_id)
                observe_run_end(run, session_cost_usd=session_cost)
        except Exception:
            # The step is committed: metrics must not make the run think otherwise.
            log.warning("run %s: could not record metrics", self._run_id, exc_info=True)

    async def _write(self, step: Step) -> bool:
        now = datetime.now(UTC)
        if self._fast_path(step):
            return await self._commit_llm_step(step, now)
        tool_set = None
        async with self._db.transaction() as conn:
            cancel, run = await self._update_run(conn, step.checkpoint, step.outcome, now)
            if isinstance(step.outcome, Suspended):
                # Handed back (SIGTERM): another worker may take it at once, not at its poll.
                await queue.notify(conn, queue.READY_CHANNEL)
            if step.llm_call is not None:
                values, tool_set = llm_call_row(self._run_id, step.llm_call)
                unwritten = self._tool_sets.unwritten(tool_set)
                if unwritten is not None:
                    await tool_sets.write(conn, unwritten, now=now)
                await conn.execute(_INSERT_LLM_CALL, values)
            if step.tool_call is not None:
                await upsert_tool_call(
                    conn, self._run_id, step.tool_call, postgres=self._db.is_postgres
                )
            await insert_events(conn, step.events)
            pending = []
            if isinstance(step.outcome, Paused):
                approval = await approvals.insert_approval(
                    conn,
                    step.outcome.approval,
                    run_id=self._run_id,
                    user_id=self._user_id,
                    now=now,
                    expires_at=now + self._approval_ttl,
                )
                pending.append(approval)
            status = _status(step.outcome)
            if status is not None and run is not None:
                view = RunView(run, pending, None)
                await webhooks.enqueue(
                    conn,
                    run_id=self._run_id,
                    url=self._webhook_url,
                    status=status,
                    now=now,
                    render=lambda event_type: self._render(event_type, view),
                )
        self._tool_sets.written(tool_set)
        return cancel

    def _fast_path(self, step: Step) -> bool:
        """The step every run makes (an LLM call, perhaps its end, no webhook to write)
        goes to PostgreSQL as one statement."""
        return (
            self._db.is_postgres
            and step.llm_call is not None
            and step.tool_call is None
            and isinstance(step.outcome, Completed | Failed | None)
            and (step.outcome is None or self._webhook_url is None)
        )

    async def _commit_llm_step(self, step: Step, now: datetime) -> bool:
        cp, call = step.checkpoint, step.llm_call
        assert call is not None
        usage = cp.usage
        status = result = error = None
        finished = None
        match step.outcome:
            case Completed(output):
                status, result, finished = "completed", json_text({"output": output}), now
            case Failed(error_type, message):
                status, finished = "failed", now
                error = json_text({"type": error_type, "message": message})
        values, tool_set = llm_call_row(self._run_id, call)
        unwritten = self._tool_sets.unwritten(tool_set)
        row = await pg_fast.llm_step(
            self._db.engine,
            fence=(self._run_id, self._owner, self._attempt),
            progress=(
                json_text(cp.model_dump(mode="json")),
                cp.next_seq,
                cp.turn,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.cost_usd,
                usage.llm_calls,
                usage.tool_calls,
            ),
            ending=(status, result, error, finished),
            llm_call=pg_fast.llm_call_args(values),
            at=now,
            events=step.events,
            tool_set=None if unwritten is None else (unwritten.digest, unwritten.tools),
        )
        if row is None:
            raise LeaseLost(f"run {self._run_id} is no longer held by {self._owner}")
        self._tool_sets.written(tool_set)
        if status is not None:
            self.last_state = record_from_row(row)
        return bool(row["cancel_requested"])

    async def begin_tool_call(
        self, intent: ToolCallRecord, checkpoint: Checkpoint, events: Sequence[RunEvent]
    ) -> ToolCallRecord | None:
        with self._reachable():
            return await self._begin_tool_call(intent, checkpoint, events)

    async def _begin_tool_call(
        self, intent: ToolCallRecord, checkpoint: Checkpoint, events: Sequence[RunEvent]
    ) -> ToolCallRecord | None:
        async with self._db.transaction() as conn:
            await self._update_run(conn, checkpoint, None, datetime.now(UTC))
            prior = (
                await conn.execute(
                    select(tool_calls_t).where(tool_calls_t.c.idempotency_key == intent.key)
                )
            ).first()
            if prior is None:
                await conn.execute(_INSERT_TOOL_CALL, tool_call_row(self._run_id, intent))
            await insert_events(conn, events)
        if prior is None:
            return None
        return ToolCallRecord(
            key=prior.idempotency_key,
            turn=prior.turn,
            index=prior.call_index,
            call_id=prior.call_id,
            name=prior.name,
            arguments=prior.arguments,
            status=prior.status,
            result=prior.result,
            latency_ms=prior.latency_ms,
        )

    async def _update_run(
        self, conn: AsyncConnection, cp: Checkpoint, outcome: Outcome | None, now: datetime
    ) -> tuple[bool, RunRecord | None]:
        """Write the checkpoint (and the outcome) if the run is still ours. Returns whether a
        cancel was requested, and the whole updated row when the run changed state."""
        usage = cp.usage
        values: dict[str, object] = {
            "checkpoint": cp.model_dump(mode="json"),
            "event_seq": cp.next_seq,
            "turns": cp.turn,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "cost_usd": usage.cost_usd,
            "llm_calls": usage.llm_calls,
            "tool_calls": usage.tool_calls,
        }
        status = _status(outcome)
        if outcome is not None:
            # Every outcome hands the run back: ended, paused for a human, or re-queued.
            values.update(status=status or "pending", lease_owner=None, lease_expires_at=None)
        match outcome:
            case Completed(output):
                values.update(result={"output": output}, finished_at=now)
            case Failed(error_type, message):
                values.update(error={"type": error_type, "message": message}, finished_at=now)
            case Cancelled():
                values.update(finished_at=now)
            case Paused() | Suspended() | None:
                pass
        values.update(_run=self._run_id, _owner=self._owner, _attempt=self._attempt)
        # The whole row only when the state changed (the answer and a webhook need it).
        stmt = _FENCED_ROW if outcome is not None else _FENCED_CANCEL
        row = (await conn.execute(stmt, values)).mappings().first()
        if row is None:
            raise LeaseLost(f"run {self._run_id} is no longer held by {self._owner}")
        run = record_from_row(row) if outcome is not None else None
        if run is not None:
            self.last_state = run
        return bool(row["cancel_requested"]), run


def _status(outcome: Outcome | None) -> str | None:
    """The run status an outcome leads to (None: the run goes on or goes back to the queue)."""
    match outcome:
        case Completed():
            return "completed"
        case Failed():
            return "failed"
        case Cancelled():
            return "cancelled"
        case Paused():
            return "awaiting_approval"
        case Suspended() | None:
            return None
