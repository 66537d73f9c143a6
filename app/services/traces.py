"""What a run's trace shows, and to whom: raw for admins, through the output filter of
the agent version that served the run for everyone else."""

from __future__ import annotations

import uuid
from dataclasses import replace

from app.agents.registry import AgentRegistry, UnknownAgent
from app.guards.redact import Redactor
from app.jobs.executor import RunExecutor
from app.services.auth import Principal
from app.services.runs import owned_run
from app.store import runs as run_store
from app.store.runs import RunRecord, Trace


async def get_trace(
    executor: RunExecutor, principal: Principal, run_id: uuid.UUID
) -> tuple[RunRecord, Trace]:
    """Every LLM and tool call of a run the caller may see: raw for admins, through the
    agent's output filter for everyone else."""
    async with executor.rt.db.transaction() as conn:
        run = await owned_run(conn, principal, run_id)
        trace = await run_store.get_trace(conn, run_id)
    if principal.role == "admin":
        return run, trace
    return run, filter_trace(
        trace, redactor_for(executor.rt.registry, run.agent, run.agent_version)
    )


def redactor_for(registry: AgentRegistry, agent: str, version: str | None) -> Redactor:
    """The output filter of an agent version (None: the stable one); the strictest one if
    it is gone."""
    try:
        return Redactor(entities=registry.resolve(agent, version)[1].redact)
    except UnknownAgent:
        return Redactor()


def filter_trace(trace: Trace, redactor: Redactor) -> Trace:
    """The trace with every prompt, answer, argument, result and rating comment filtered."""
    text_fields = ("request", "response", "error", "arguments", "result")
    return Trace(
        llm_calls=[_filtered(c, redactor, text_fields) for c in trace.llm_calls],
        tool_calls=[_filtered(c, redactor, text_fields) for c in trace.tool_calls],
        feedback=[
            f if f.comment is None else replace(f, comment=redactor.redact(f.comment))
            for f in trace.feedback
        ],
    )


def _filtered(
    row: dict[str, object], redactor: Redactor, fields: tuple[str, ...]
) -> dict[str, object]:
    return {k: redactor.redact_json(v) if k in fields else v for k, v in row.items()}
