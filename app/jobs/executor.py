"""Drives runs in this process: each under a lease renewed by one heartbeat loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from app.agents.registry import UnknownAgent
from app.bus.cache import build_response_store
from app.jobs.resilience import Resilience, build_breakers
from app.jobs.runtime import Runtime, build_spec
from app.jobs.waiting import wait_any
from app.jobs.webhooks import render_webhook
from app.llm.budgeted import BudgetedModel
from app.llm.cache import CachedModel, cache_scope
from app.llm.types import ModelClient
from app.observability.logs import RUN_ID
from app.observability.metrics import RUNS_IN_FLIGHT
from app.runner.errors import LeaseLost, StoreUnavailable
from app.runner.events import EventType, RunEvent
from app.runner.loop import GuardedRunner, RunSpec
from app.runner.protocols import ApprovalDecision, Failed, Step
from app.runner.shadow import ShadowReplay
from app.runner.state import Checkpoint
from app.services.budgets import BudgetKeeper
from app.services.rollouts import PolicyBook
from app.store import approvals, queue
from app.store.db import is_unavailable
from app.store.queue import renew_leases
from app.store.run_store import SqlRunStore
from app.store.runs import RunRecord, tool_results
from app.store.tool_sets import ToolSetMemory

log = logging.getLogger(__name__)
HAND_BACK_BACKOFF_MAX_S = 5.0
"""The longest wait between attempts to hand back a run while the database is away."""


@dataclass
class _Held:
    runner: GuardedRunner
    task: asyncio.Task[RunRecord | None]
    attempt: int


class RunExecutor:
    """Runs held by this process, as asyncio tasks, with their leases kept alive."""

    def __init__(self, rt: Runtime, *, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self._held: dict[str, _Held] = {}
        self.slot_freed = asyncio.Event()
        self._responses = build_response_store(rt.writes)
        """The prompt cache's answers (this process's own without Redis)."""
        self.budgets = BudgetKeeper.from_settings(rt.settings, rt.db, rt.writes)
        """Token budgets: reservations around every LLM call, usage, overrides."""
        self.resilience = Resilience(
            rt.settings,
            providers=rt.providers,
            registry=rt.registry,
            breakers=build_breakers(rt.settings, rt.redis),
        )
        """Retries, circuit breakers (shared through Redis), fallback chains, guarded tools."""
        self.policies = PolicyBook(rt.db, rt.registry, refresh_s=rt.settings.policy_refresh_s)
        """Agents' traffic policies: which version serves each request."""
        self._tool_sets = ToolSetMemory()
        """The sets of tools this process's runs have stored (each is written once)."""
        rt.wakeups.on_cancel(self.request_cancel)

    @property
    def active(self) -> int:
        return len(self._held)

    def start(
        self,
        spec: RunSpec,
        checkpoint: Checkpoint,
        *,
        attempt: int,
        user_id: str,
        webhook_url: str | None = None,
        decisions: dict[str, ApprovalDecision] | None = None,
    ) -> asyncio.Task[RunRecord | None]:
        """Drive the run from `checkpoint`; this process must hold its lease at `attempt`.
        The task ends with the run as its last commit left it (None if it could not write)."""
        client = self.model_for(spec, user_id=user_id)
        store = self._store(
            spec.run_id, user_id, attempt, webhook_url, agent=spec.agent, tools=spec.tools
        )
        runner = GuardedRunner(
            spec,
            model=client,
            tools=self.resilience.tools,
            tool_context=self.rt.tool_context,
            store=store,
            sink=self.rt.bus,
            decisions=decisions,
        )
        task = asyncio.create_task(self._drive(runner, store, checkpoint, spec.run_id))
        self._held[spec.run_id] = _Held(runner, task, attempt)
        RUNS_IN_FLIGHT.inc()
        task.add_done_callback(lambda _: self._release(spec.run_id))
        return task

    def model_for(self, spec: RunSpec, *, user_id: str) -> ModelClient:
        """The model client one run calls: the provider, wrapped in the guards that sit
        around every LLM call (the one place they are composed, outermost first)."""
        # Resilience, innermost: fallback chain → circuit breaker → retries → provider.
        client = self.resilience.model_client(spec)
        if spec.shadow is None:
            # Budget: reserve the call's worst case from the user's budget, settle to its
            # usage. Shadow runs are the operator's experiment: costed, never the user's.
            client = BudgetedModel(
                client,
                user_id=user_id,
                budgets=self.budgets,
                call_timeout_s=spec.limits.llm_timeout_s,
            )
        # Prompt cache, outermost: a hit reaches neither the budget nor the provider.
        client = self._cached(client, spec, user_id=user_id)
        return client

    def _cached(self, client: ModelClient, spec: RunSpec, *, user_id: str) -> ModelClient:
        """`client` behind the prompt cache, when the run's agent version caches."""
        with contextlib.suppress(UnknownAgent):
            _, version = self.rt.registry.resolve(spec.agent, spec.agent_version)
            ttl_s = self.rt.settings.prompt_cache_ttl_s
            scope = cache_scope(version, agent=spec.agent, user_id=user_id, default_ttl_s=ttl_s)
            if scope is not None:
                return CachedModel(client, self._responses, scope=scope)
        return client

    async def start_claimed(self, run: RunRecord) -> None:
        """Resume (or begin) a run this process just claimed from the queue."""
        checkpoint = Checkpoint.model_validate(run.checkpoint or {})
        decisions = {}
        if checkpoint.unanswered_tool_calls():
            # Only a run stopped between a model's tool call and its result can have
            # decided approvals waiting; a fresh run needs no extra round trip.
            async with self.rt.db.transaction() as conn:
                decisions = await approvals.decisions_for_run(conn, run.id)
        # Events appended while nobody held the run (approval decisions) come first.
        checkpoint.next_seq = max(checkpoint.next_seq, run.event_seq)
        if run.pattern == "stream" and run.attempt > 1:
            checkpoint.next_seq = max(checkpoint.next_seq, await self._live_next_seq(run))
        try:
            _, version = self.rt.registry.resolve(run.agent, run.agent_version)
        except UnknownAgent as exc:
            await self._fail_unrunnable(run, checkpoint, str(exc))
            return
        shadow = None
        if run.shadow_of is not None:
            async with self.rt.db.read() as conn:
                shadow = ShadowReplay.of(await tool_results(conn, run.shadow_of))
        spec = build_spec(
            self.rt,
            run_id=str(run.id),
            agent=run.agent,
            version=version,
            model_ref=run.model,
            max_turns=run.max_turns,
            timeout_s=run.timeout_s,
            stream=run.pattern == "stream",
            shadow=shadow,
        )
        self.start(
            spec,
            checkpoint,
            attempt=run.attempt,
            user_id=run.user_id,
            webhook_url=run.webhook_url,
            decisions=decisions,
        )

    async def _live_next_seq(self, run: RunRecord) -> int:
        """Past the deltas a dead worker streamed but never committed: readers saw them,
        so their sequence numbers are spent."""
        try:
            last = await self.rt.bus.last_seq(str(run.id))
        except Exception:
            log.warning("event bus: cannot read the last sequence of run %s", run.id)
            return 0
        return 0 if last is None else last + 1

    def _store(
        self,
        run_id: str,
        user_id: str,
        attempt: int,
        webhook_url: str | None,
        *,
        agent: str,
        tools: frozenset[str] = frozenset(),
    ) -> SqlRunStore:
        """The run's writes, fenced by this process's lease at `attempt`."""
        return SqlRunStore(
            self.rt.db,
            run_id=run_id,
            user_id=user_id,
            agent=agent,
            allowed_tools=tools,
            owner=self.owner,
            attempt=attempt,
            webhook_url=webhook_url,
            approval_ttl_s=self.rt.settings.approval_ttl_s,
            render_webhook=render_webhook,
            tool_sets=self._tool_sets,
        )

    async def _fail_unrunnable(self, run: RunRecord, cp: Checkpoint, message: str) -> None:
        store = self._store(str(run.id), run.user_id, run.attempt, run.webhook_url, agent=run.agent)
        error = {"type": "validation_error", "message": message}
        event = RunEvent(str(run.id), cp.next_seq, EventType.RUN_FAILED, {"error": error})
        cp.next_seq += 1
        with contextlib.suppress(LeaseLost):
            await store.commit(
                Step(checkpoint=cp, events=[event], outcome=Failed("validation_error", message))
            )

    def _release(self, run_id: str) -> None:
        self._held.pop(run_id, None)
        RUNS_IN_FLIGHT.dec()  # once per task, as `start` counted it
        self.slot_freed.set()

    async def _drive(
        self, runner: GuardedRunner, store: SqlRunStore, checkpoint: Checkpoint, run_id: str
    ) -> RunRecord | None:
        RUN_ID.set(run_id)  # this task's own context: its log lines name the run
        try:
            await runner.run(checkpoint)
        except LeaseLost:
            log.warning("run %s: lease lost, stopped without writing", run_id)
            return None
        except StoreUnavailable:
            log.warning("run %s: database unreachable; handing it back", run_id, exc_info=True)
            await self._hand_back(run_id)
            return None
        except Exception:
            # The final write failed; the lease expires and another worker resumes the run.
            log.exception("run %s: could not record its end", run_id)
            return None
        return store.last_state

    async def _hand_back(self, run_id: str) -> None:
        """Re-queue a run whose write failed for want of the database, to resume from its
        last commit on whichever worker claims it first. Tried again with backoff for a
        lease's length; after that the lease's expiry hands it back."""
        held = self._held.get(run_id)
        if held is None:
            return
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.rt.settings.lease_seconds
        backoff_s = 0.2
        while True:
            try:
                async with self.rt.db.transaction() as conn:
                    handed = await queue.hand_back(
                        conn, uuid.UUID(run_id), owner=self.owner, attempt=held.attempt
                    )
                break
            except Exception as exc:
                if not is_unavailable(exc) or loop.time() + backoff_s > give_up_at:
                    log.warning(
                        "run %s: not handed back; it resumes when its lease expires", run_id
                    )
                    return
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, HAND_BACK_BACKOFF_MAX_S)
        if handed:
            self.rt.wakeups.ready()

    def request_cancel(self, run_id: str) -> None:
        """Stop a held run at its next step boundary, aborting an in-flight LLM call."""
        held = self._held.get(run_id)
        if held is not None:
            held.runner.stop("cancel")

    async def heartbeat(self) -> None:
        """Renew every lease this process holds; stop runs it lost; pass on cancels."""
        held_now = dict(self._held)
        if not held_now:
            return
        async with self.rt.db.transaction() as conn:
            alive = await renew_leases(
                conn,
                owner=self.owner,
                lease_s=self.rt.settings.lease_seconds,
                now=datetime.now(UTC),
            )
        # Only runs held before the renewal: one started since may not be visible to it.
        for run_id, held in held_now.items():
            state = alive.get(uuid.UUID(run_id))
            if state is None or state[0] != held.attempt:
                # Another worker owns it now (or it ended): write nothing more.
                if not held.task.done():
                    log.warning("run %s: lease lost, stopping", run_id)
                    held.task.cancel()
            elif state[1]:
                held.runner.stop("cancel")

    async def heartbeat_forever(self, stop: asyncio.Event) -> None:
        """Renew leases every third of the lease until `stop` is set."""
        interval = self.rt.settings.lease_seconds / 3
        while True:
            await wait_any(interval, stop)
            if stop.is_set():
                return
            try:
                await self.heartbeat()
            except Exception:
                log.warning("lease heartbeat failed", exc_info=True)

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Let each run finish its current step and hand it back, then cancel stragglers."""
        for held in self._held.values():
            held.runner.stop("suspend")
        tasks = [h.task for h in self._held.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
