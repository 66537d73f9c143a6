"""Traffic policies as the service applies them: which version serves each request.

Policies live in the database; each process keeps a copy of all of them for
`AGENTSVC_POLICY_REFRESH_S` (default 2 s), so an admin's change applies on the replica that
made it at once and on every other replica within that time. An agent without a stored
policy serves its declared stable version. A stored policy that names a version the
running code does not declare (a deployment removed it) is set aside with a warning, and
the agent serves its declared stable version until an admin fixes the policy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from app.agents.policy import Assignment, PolicySpec, TrafficPolicy, assign
from app.agents.registry import AgentRegistry, UnknownAgent
from app.errors import Conflict, InvalidRequest, NotFound
from app.services.auth import Principal
from app.store import policies as policy_store
from app.store.db import Database
from app.store.policies import PolicyRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PolicyState:
    """An agent's policy in force, and where it comes from."""

    agent: str
    policy: TrafficPolicy
    revision: int
    """0: the agent's declared default (nothing stored)."""
    updated_at: datetime | None = None
    updated_by: str | None = None
    problem: str | None = None
    """Why a stored policy is set aside (it names versions the code does not declare)."""


class PolicyBook:
    """Every agent's policy in force, as this process last read them. One per process."""

    def __init__(
        self,
        db: Database,
        registry: AgentRegistry,
        *,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._registry = registry
        self._refresh_s = refresh_s
        self._clock = clock
        self._draw = draw
        self._states: dict[str, PolicyState] = {}
        self._fresh_until = float("-inf")
        self._loading = asyncio.Lock()

    async def state(self, agent: str) -> PolicyState:
        """The agent's policy in force (the agent must exist)."""
        if self._clock() >= self._fresh_until:
            async with self._loading:
                if self._clock() >= self._fresh_until:
                    await self.reload()
        return self._states.get(agent) or self._default(agent)

    async def states(self) -> list[PolicyState]:
        """Every stored policy in force, read afresh."""
        await self.reload()
        return list(self._states.values())

    async def assign(self, agent: str, user_id: str) -> Assignment:
        """The version that serves this request of `user_id` (and a shadow copy, if drawn)."""
        state = await self.state(agent)
        return assign(state.policy, agent=agent, user_id=user_id, sample=self._draw())

    async def reload(self) -> None:
        """Read every stored policy now."""
        async with self._db.read() as conn:
            records = await policy_store.list_policies(conn)
        self._states = {r.agent: self._from_record(r) for r in records}
        self._fresh_until = self._clock() + self._refresh_s

    def _default(self, agent: str) -> PolicyState:
        stable = self._registry.agents[agent].stable
        return PolicyState(agent=agent, policy=TrafficPolicy(stable=stable), revision=0)

    def _from_record(self, record: PolicyRecord) -> PolicyState:
        problem = None
        try:
            policy = TrafficPolicy.model_validate(record.policy)
            check_versions(self._registry, record.agent, policy)
        except (ValidationError, InvalidRequest, UnknownAgent) as exc:
            log.warning("traffic policy of agent %s set aside: %s", record.agent, exc)
            problem = str(exc)
            policy = (
                self._default(record.agent).policy
                if record.agent in self._registry.agents
                else TrafficPolicy(stable="?")
            )
        return PolicyState(
            agent=record.agent,
            policy=policy,
            revision=record.revision,
            updated_at=record.updated_at,
            updated_by=record.updated_by,
            problem=problem,
        )

    def forget(self) -> None:
        """Read the policies again on the next request (after this process changed one)."""
        self._fresh_until = float("-inf")


def check_versions(registry: AgentRegistry, agent: str, policy: PolicySpec) -> None:
    """Every version the policy names must be one the agent declares."""
    if agent not in registry.agents:
        raise UnknownAgent(f"unknown agent {agent!r}")
    declared = {v.version for v in registry.agents[agent].versions}
    unknown = sorted(policy.versions() - declared)
    if unknown:
        raise InvalidRequest(
            f"agent {agent!r} declares no version {', '.join(map(repr, unknown))} "
            f"(declared: {', '.join(sorted(declared))})"
        )


def _known_agent(registry: AgentRegistry, agent: str) -> None:
    if agent not in registry.agents:
        raise NotFound(f"agent {agent} not found")


async def get_policy(book: PolicyBook, registry: AgentRegistry, agent: str) -> PolicyState:
    _known_agent(registry, agent)
    return await book.state(agent)


async def set_policy(
    book: PolicyBook,
    registry: AgentRegistry,
    db: Database,
    principal: Principal | None,
    agent: str,
    spec: PolicySpec,
    *,
    expect_revision: int | None = None,
) -> PolicyState:
    """Replace the agent's policy (admins; `principal` None is the CLI). With
    `expect_revision`, only if the stored policy is still that revision (409 otherwise)."""
    if principal is not None:
        principal.require_admin("only admins may change traffic policies")
    _known_agent(registry, agent)
    check_versions(registry, agent, spec)
    async with db.transaction() as conn:
        current = await policy_store.get_policy(conn, agent, lock=True)
        revision = None if current is None else current.revision
        if expect_revision is not None and expect_revision != (revision or 0):
            raise Conflict(
                f"the policy of {agent} is at revision {revision or 0}, not {expect_revision}"
            )
        policy = _keep_rollback_record(current, spec)
        record = await policy_store.put_policy(
            conn,
            agent,
            policy.model_dump(mode="json"),
            now=datetime.now(UTC),
            by="cli" if principal is None else principal.user_id,
            expect_revision=revision,
        )
        if record is None:
            raise Conflict(f"the policy of {agent} changed meanwhile; read it and try again")
    book.forget()
    return await book.state(agent)


def _keep_rollback_record(current: PolicyRecord | None, policy: PolicySpec) -> TrafficPolicy:
    """`last_rollback` is the service's to write: it stays on the policy until an admin sets
    a canary of another version, whatever the new policy says."""
    last = None if current is None else current.policy.get("last_rollback")
    before = None if current is None else current.policy.get("canary")
    before_version = before.get("version") if isinstance(before, dict) else None
    if policy.canary is not None and policy.canary.version != before_version:
        last = None
    return TrafficPolicy.model_validate({**policy.model_dump(mode="json"), "last_rollback": last})
