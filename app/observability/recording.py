"""Records what the service did into the metrics of `metrics.py`, one function per fact.

Callers hand over the records they already hold (a committed Step, an ended RunRecord,
claimed runs), so each kind of metric is recorded in exactly one place:

- LLM calls, tool calls and overhead: `observe_step`, from the run store's commit, the
  same records that become the trace (so metrics and traces agree);
- runs that ended: `observe_run_end`, from the run store (runs a worker drives) and from
  `queue.finish_unowned` (cancelled while queued or paused, given up after crashes);
- claims and the queue: `observe_claims` and `observe_queue`, from the worker.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from app.observability.metrics import (
    CLAIM_LAG,
    LLM_CALLS,
    LLM_COST,
    LLM_LATENCY,
    LLM_TOKENS,
    OVERHEAD,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    RUN_COST,
    RUN_DURATION,
    RUN_ERRORS,
    RUN_TURNS,
    RUNS,
    SESSION_COST,
    SESSIONS,
    TOOL_CALLS,
    TOOL_LATENCY,
)
from app.runner.protocols import Cancelled, LLMCallRecord, Step, ToolCallRecord
from app.store.runs import RunRecord

NOT_ALLOWED = "(not allowed)"
"""The tool label of calls to names outside the agent's allowlist: the model chooses those
names, so they must not become label values."""


def observe_step(
    step: Step, *, agent: str, allowed_tools: Collection[str], service_s: float
) -> None:
    """A committed step: its LLM call or tool call, and the service's overhead on it.
    `service_s` is the wall time from the run's previous commit (or the start of this
    process's drive of it) to the end of this one."""
    waited_s = 0.0
    if step.llm_call is not None:
        waited_s = _observe_llm_call(step.llm_call, agent=agent, cancelled=_cancelled(step))
    tool = step.tool_call
    if tool is not None and tool.status != "started":
        waited_s = _observe_tool_call(tool, allowed_tools)
    if step.llm_call is not None or tool is not None:
        OVERHEAD.observe(max(service_s - waited_s, 0.0))


def _cancelled(step: Step) -> bool:
    return isinstance(step.outcome, Cancelled)


def _observe_llm_call(call: LLMCallRecord, *, agent: str, cancelled: bool) -> float:
    """Count the call; the seconds the run waited for it."""
    labels = (call.provider, call.model)
    latency_s = call.latency_ms / 1000
    if call.cache_hit:
        # Answered without the model: the whole step is the service's own time.
        LLM_CALLS.labels(*labels, "cache_hit").inc()
        return 0.0
    if call.error is not None:
        LLM_CALLS.labels(*labels, "cancelled" if cancelled else "error").inc()
    else:
        LLM_CALLS.labels(*labels, "ok").inc()
        usage = call.usage
        LLM_TOKENS.labels(*labels, "input").inc(usage.input_tokens)
        LLM_TOKENS.labels(*labels, "output").inc(usage.output_tokens)
        LLM_TOKENS.labels(*labels, "cached").inc(usage.cached_tokens)
        LLM_COST.labels(*labels, agent).inc(call.cost_usd)
    LLM_LATENCY.labels(*labels).observe(latency_s)
    return latency_s


def _observe_tool_call(call: ToolCallRecord, allowed_tools: Collection[str]) -> float:
    """Count the call; the seconds the run waited for it (0 when it did not run)."""
    tool = call.name if call.name in allowed_tools else NOT_ALLOWED
    TOOL_CALLS.labels(tool, call.status).inc()
    if call.latency_ms is None:
        return 0.0
    TOOL_LATENCY.labels(tool).observe(call.latency_ms / 1000)
    return call.latency_ms / 1000


def observe_run_end(run: RunRecord, *, session_cost_usd: float | None) -> None:
    """A run that reached completed, failed or cancelled. `session_cost_usd`: the cost of
    its session so far, this run included (None for a run outside a session)."""
    RUNS.labels(run.agent, run.status, run.pattern).inc()
    if run.shadow_of is not None:
        # A shadow run's errors and latency are the experiment's, not the service's: they
        # stay out of the series the alerts watch (the experiments report compares them).
        return
    if run.status == "failed":
        error_type = (run.error or {}).get("type", "internal")
        RUN_ERRORS.labels(run.agent, str(error_type)).inc()
    if run.finished_at is not None:
        duration = (run.finished_at - run.created_at).total_seconds()
        RUN_DURATION.labels(run.agent, run.status).observe(max(duration, 0.0))
    RUN_TURNS.labels(run.agent).observe(run.turns)
    RUN_COST.labels(run.agent).observe(run.cost_usd)
    if run.history_len == 0:
        # The first message of a session (its later ones inherit at least one message).
        SESSIONS.labels(run.agent).inc()
    SESSION_COST.labels(run.agent).observe(
        run.cost_usd if session_cost_usd is None else session_cost_usd
    )


def observe_claims(claimed: Sequence[RunRecord], *, now: datetime) -> None:
    """Runs a worker just claimed. Only first claims are observed: a run that comes back to
    the queue (approved, re-queued after a crash) does not record when it became ready."""
    for run in claimed:
        if run.attempt == 1:
            CLAIM_LAG.observe(max((now - run.created_at).total_seconds(), 0.0))


def observe_queue(depth: int, oldest: datetime | None, *, now: datetime) -> None:
    """The queue as a worker just counted it."""
    QUEUE_DEPTH.set(depth)
    QUEUE_OLDEST_AGE.set(0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0))
