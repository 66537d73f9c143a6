"""Agents' traffic policies: which version serves whom (stable, canary, A/B, shadow)."""

from __future__ import annotations

from datetime import datetime

from fastapi import Query
from pydantic import BaseModel

from app.agents.policy import PolicySpec, TrafficPolicy
from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    problem_responses,
)
from app.services import rollouts
from app.services.rollouts import PolicyState

router = api_router(tags=["agents"])


class PolicyRead(BaseModel):
    agent: str
    revision: int
    """+1 on every change; 0: nothing stored, the agent's declared stable version serves."""
    policy: TrafficPolicy
    updated_at: datetime | None
    updated_by: str | None
    """An admin's user id, `cli`, or `rollback` (the automatic canary rollback)."""
    problem: str | None = None
    """Why the stored policy is set aside (it names versions this deployment does not
    declare); the declared stable version serves meanwhile."""

    @classmethod
    def from_state(cls, state: PolicyState) -> PolicyRead:
        return cls(
            agent=state.agent,
            revision=state.revision,
            policy=state.policy,
            updated_at=state.updated_at,
            updated_by=state.updated_by,
            problem=state.problem,
        )


@router.get(
    "/agent/agents/{agent}/policy",
    response_model=PolicyRead,
    responses=problem_responses(Unauthorized, NotFound),
)
async def get_policy(agent: str, _: PrincipalDep, services: ServicesDep) -> PolicyRead:
    """The agent's traffic policy in force."""
    executor = services.executor
    state = await rollouts.get_policy(executor.policies, executor.rt.registry, agent)
    return PolicyRead.from_state(state)


@router.put(
    "/agent/agents/{agent}/policy",
    response_model=PolicyRead,
    responses=problem_responses(Unauthorized, Forbidden, NotFound, Conflict, InvalidRequest),
)
async def put_policy(
    agent: str,
    body: PolicySpec,
    principal: PrincipalDep,
    services: ServicesDep,
    expect_revision: int | None = Query(default=None, ge=0),
) -> PolicyRead:
    """Replace the agent's traffic policy (admins). Every replica applies it within
    AGENTSVC_POLICY_REFRESH_S. With `expect_revision`, only if the policy is still at that
    revision (409 otherwise), so two operators cannot silently overwrite each other."""
    executor = services.executor
    state = await rollouts.set_policy(
        executor.policies,
        executor.rt.registry,
        executor.rt.db,
        principal,
        agent,
        body,
        expect_revision=expect_revision,
    )
    return PolicyRead.from_state(state)
