"""Creating, reading and tracing runs; the HTTP routes call these."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.agents.registry import UnknownAgent
from app.api.schemas import RunCreate
from app.errors import InvalidRequest, NotFound
from app.jobs.executor import RunExecutor, build_spec
from app.runner.loop import start_run
from app.services.auth import Principal
from app.store import runs as run_store
from app.store.runs import NewRun, RunRecord, Trace


@dataclass(frozen=True, slots=True)
class StartedRun:
    run_id: uuid.UUID
    task: asyncio.Task[None]


def parse_run_id(job_id: str) -> uuid.UUID:
    """A job id; one that is not a UUID is simply not found."""
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"run {job_id} not found") from None


async def start_inline_run(
    executor: RunExecutor, principal: Principal, body: RunCreate, *, pattern: str
) -> StartedRun:
    """Store a running run under this process's lease and start driving it here."""
    rt = executor.rt
    try:
        agent, version = rt.registry.resolve(body.agent)
    except UnknownAgent as exc:
        raise InvalidRequest(str(exc)) from None
    _check_limit("max_turns", body.max_turns, version.max_turns)
    _check_limit("timeout_s", body.timeout_s, version.timeout_s)
    max_turns = body.max_turns or version.max_turns
    timeout_s = body.timeout_s or version.timeout_s
    model_ref = version.model or rt.settings.default_model
    run_id = uuid.uuid4()
    checkpoint, started = start_run(
        run_id=str(run_id),
        instructions=version.instructions,
        user_input=body.input,
        data={"agent": agent.name, "agent_version": version.version, "model": model_ref},
    )
    now = datetime.now(UTC)
    run = NewRun(
        id=run_id,
        user_id=principal.user_id,
        agent=agent.name,
        agent_version=version.version,
        model=model_ref,
        pattern=pattern,
        status="running",
        input=body.input,
        metadata=dict(body.metadata),
        max_turns=max_turns,
        timeout_s=timeout_s,
        created_at=now,
        started_at=now,
        lease_owner=executor.owner,
        lease_expires_at=now + timedelta(seconds=rt.settings.lease_seconds),
        attempt=1,
    )
    async with rt.db.transaction() as conn:
        await run_store.insert_run(conn, run, checkpoint=checkpoint, events=[started])
    spec = build_spec(
        rt,
        run_id=str(run_id),
        version=version,
        model_ref=model_ref,
        max_turns=max_turns,
        timeout_s=timeout_s,
    )
    return StartedRun(run_id, executor.start(spec, checkpoint, attempt=1))


def _check_limit(name: str, asked: float | None, limit: float) -> None:
    """A request may lower an agent's limit, never raise it."""
    if asked is not None and asked > limit:
        raise InvalidRequest(f"{name} {asked:g} exceeds the agent's limit of {limit:g}")


async def get_run(executor: RunExecutor, principal: Principal, run_id: uuid.UUID) -> RunRecord:
    """The run, if the caller may see it."""
    async with executor.rt.db.transaction() as conn:
        run = await run_store.get_run(conn, run_id, principal.owner)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


async def get_trace(
    executor: RunExecutor, principal: Principal, run_id: uuid.UUID
) -> tuple[RunRecord, Trace]:
    """Every LLM and tool call of a run the caller may see."""
    async with executor.rt.db.transaction() as conn:
        run = await run_store.get_run(conn, run_id, principal.owner)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run, await run_store.get_trace(conn, run_id)
