"""Health, readiness, metrics, the agent catalogue and run traces."""

from __future__ import annotations

import logging

from fastapi import Response

from app.api.ops_schemas import (
    AgentCatalog,
    AgentRead,
    AgentVersionRead,
    LLMCallRead,
    ToolCallRead,
    ToolRead,
    TraceRead,
)
from app.api.schemas import FeedbackRead, RoutingRead
from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import (
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    problem_responses,
)
from app.guards.limits import lowest
from app.observability.export import metrics_registry, render_metrics
from app.services import runs, traces

router = api_router()
log = logging.getLogger(__name__)


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses=problem_responses(ServiceUnavailable))
async def readyz(services: ServicesDep) -> dict[str, str]:
    """The database answers."""
    try:
        await services.db.ping()
    except Exception as exc:
        log.warning("readiness check failed: %s", exc)
        raise ServiceUnavailable("database unreachable") from None
    return {"status": "ready"}


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: this process's, or every process's of the host that shares its
    metrics directory (AGENTSVC_METRICS_DIR)."""
    registry = metrics_registry(services.settings.metrics_dir)
    body, content_type = await render_metrics(registry)
    return Response(body, media_type=content_type)


@router.get(
    "/agent/agents",
    tags=["agents"],
    response_model=AgentCatalog,
    responses=problem_responses(Unauthorized, TooManyRequests),
)
async def list_agents(_: PrincipalDep, services: ServicesDep) -> AgentCatalog:
    """Agents, their versions and traffic policies, and the tools each may call with risk
    and JSON schema."""
    registry = services.registry
    settings = services.settings
    agents = []
    for agent in registry.agents.values():
        names = sorted({t for v in agent.versions for t in v.tools})
        tools = [t for n in names if (t := registry.tools.get(n)) is not None]
        agents.append(
            AgentRead(
                name=agent.name,
                description=agent.description,
                stable=agent.stable,
                policy=(await services.executor.policies.state(agent.name)).policy,
                versions=[
                    AgentVersionRead(
                        version=v.version,
                        model=v.model or services.settings.default_model,
                        tools=list(v.tools),
                        max_turns=v.max_turns,
                        timeout_s=v.timeout_s,
                        temperature=v.temperature,
                        max_output_tokens=v.max_output_tokens,
                        redact=sorted(v.redact),
                        max_run_tokens=lowest(v.max_run_tokens, settings.max_run_tokens),
                        max_run_cost_usd=lowest(v.max_run_cost_usd, settings.max_run_cost_usd),
                    )
                    for v in agent.versions
                ],
                tools=[
                    ToolRead(
                        name=t.name,
                        description=t.description,
                        risk=t.risk.value,
                        idempotent=t.idempotent,
                        read_only=t.read_only,
                        timeout_s=t.timeout_s,
                        parameters=t.json_schema(),
                    )
                    for t in tools
                ],
            )
        )
    return AgentCatalog(agents=agents)


@router.get(
    "/agent/runs/{job_id}/trace",
    tags=["runs"],
    response_model=TraceRead,
    responses=problem_responses(NotFound, Unauthorized, TooManyRequests),
)
async def get_trace(job_id: str, principal: PrincipalDep, services: ServicesDep) -> TraceRead:
    """Every LLM call (prompt, response, tokens, cost) and tool call of a run."""
    run, trace = await traces.get_trace(services.executor, principal, runs.parse_id(job_id))
    return TraceRead(
        job_id=str(run.id),
        routing=RoutingRead.from_run(run),
        llm_calls=[LLMCallRead.model_validate(c) for c in trace.llm_calls],
        tool_calls=[ToolCallRead.model_validate(c) for c in trace.tool_calls],
        feedback=[FeedbackRead.model_validate(f, from_attributes=True) for f in trace.feedback],
    )
