"""Circuit breakers: a target that keeps failing is not called for a while.

    closed ──(failure_threshold failures within window_s)──▶ open
    open ──(cooldown_s after its last failure)──▶ half-open: up to half_open_probes calls
    half-open ──probe succeeds──▶ closed · ──probe fails──▶ open again, for a full cool-down

A failure reported while open (a call let in before it opened) extends the open
period. The policy is a value; `BreakerRecord` transitions are the reference the
Redis scripts of `app.bus.breakers` follow, so replicas agree. Targets are
`llm:<provider>/<model>` and `tool:<name>`.

With a shared store, `Breakers` may trust a *closed* answer in this process for a short
while (`trust_closed_s`) instead of asking Redis before every call; failures still reach
the store at once, and anything but closed ends the trust at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.llm.errors import ProviderBadRequest, ProviderError
from app.llm.retry import CallFailed
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, ModelClient
from app.observability.metrics import BREAKER_STATE, BREAKER_TRANSITIONS

BreakerState = Literal["closed", "half_open", "open"]
STATE_CODES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}
"""The `agentsvc_breaker_state` gauge's values."""


class CircuitOpen(Exception):
    """The target's breaker is open: it was not called."""

    def __init__(self, target: str, *, retry_in_s: float) -> None:
        super().__init__(
            f"circuit breaker open after repeated failures; next try in {retry_in_s:.1f} s"
        )
        self.target = target
        self.retry_in_s = retry_in_s


@dataclass(frozen=True, kw_only=True)
class BreakerPolicy:
    """When a breaker opens and how it closes again. 0 means 0 (a 0 s cool-down probes
    at once), never "the default"."""

    failure_threshold: int
    """Failures within `window_s` that open the breaker (at least 1)."""
    window_s: float
    """The sliding window in which failures count."""
    cooldown_s: float
    """Time an open breaker refuses calls after its last failure."""
    half_open_probes: int
    """Calls let through at once while half-open (at least 1); one that does not report
    back frees its place after `cooldown_s`."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be at least 1")
        if self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError("window_s must be > 0 and cooldown_s >= 0")

    def check_admission(self, verdict: Verdict, target: str) -> None:
        """Raise `CircuitOpen` when `verdict` refused the call."""
        if not verdict.admitted:
            raise CircuitOpen(target, retry_in_s=verdict.retry_in_s)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A breaker's answer to "may I call?"."""

    admitted: bool
    probe: bool
    """Let through as a half-open probe: report its outcome."""
    state: BreakerState
    changed: bool
    """This check moved the breaker (open → half-open)."""
    retry_in_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Change:
    """A breaker's state after an outcome was reported."""

    state: BreakerState
    changed: bool


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker as an operator sees it."""

    target: str
    state: BreakerState
    """`half_open` also when the cool-down is over and the next call will be a probe."""
    failures: int
    """Failures counted in the current window (closed)."""
    retry_in_s: float
    """Open: time until calls are let through again."""


@dataclass(frozen=True, slots=True)
class BreakerReport:
    """Every breaker with state, and whether they came from the shared store (Redis)."""

    shared: bool
    breakers: list[BreakerSnapshot]


@dataclass(kw_only=True)
class BreakerRecord:
    """One breaker's state, mutated by the policy's rules (the in-process store's form)."""

    state: BreakerState = "closed"
    failures: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    probes: int = 0
    probe_at: float = 0.0

    def admit(self, policy: BreakerPolicy, now: float) -> Verdict:
        changed = False
        if self.state == "open":
            reopen_at = self.opened_at + policy.cooldown_s
            if now < reopen_at:
                return Verdict(False, False, "open", False, reopen_at - now)
            self.state, self.probes, changed = "half_open", 0, True
        if self.state == "closed":
            return Verdict(True, False, "closed", False)
        # Probes that never reported back (their process died) free their places.
        stale = now >= self.probe_at + policy.cooldown_s
        if self.probes >= policy.half_open_probes and not stale:
            left = self.probe_at + policy.cooldown_s - now
            return Verdict(False, False, "half_open", changed, left)
        self.probes = 1 if stale else self.probes + 1
        self.probe_at = now
        return Verdict(True, True, "half_open", changed)

    def fail(self, policy: BreakerPolicy, now: float) -> Change:
        if self.state == "closed":
            self.failures = [t for t in self.failures if t > now - policy.window_s] + [now]
            if len(self.failures) < policy.failure_threshold:
                return Change("closed", False)
        changed = self.state != "open"
        self.state, self.opened_at, self.probes, self.failures = "open", now, 0, []
        return Change("open", changed)

    def succeed(self) -> Change:
        if self.state != "half_open":
            return Change(self.state, False)
        self.state, self.probes, self.failures = "closed", 0, []
        return Change("closed", True)

    def snapshot(self, target: str, policy: BreakerPolicy, now: float) -> BreakerSnapshot:
        if self.state == "open":
            left = self.opened_at + policy.cooldown_s - now
            if left > 0:
                return BreakerSnapshot(target, "open", 0, left)
            return BreakerSnapshot(target, "half_open", 0, 0.0)
        recent = sum(1 for t in self.failures if t > now - policy.window_s)
        return BreakerSnapshot(target, self.state, recent, 0.0)


class BreakerStore(Protocol):
    """Where breaker state lives: Redis (shared by replicas) or this process."""

    async def admit(self, target: str, policy: BreakerPolicy) -> Verdict: ...

    async def fail(self, target: str, policy: BreakerPolicy) -> Change: ...

    async def succeed(self, target: str, policy: BreakerPolicy) -> Change: ...

    async def snapshot(self, policy: BreakerPolicy) -> BreakerReport: ...


class Breakers:
    """Every breaker of this process under one policy, over a store; keeps the metrics.

    `trust_closed_s` > 0: a *closed* answer of the store is taken as the answer of this
    process's calls to that target for `trust_closed_s` after it was asked, without asking
    again (with Redis, each check is a round trip). Failures are still reported to the store
    at once, and any answer but closed (a failure of this process crossing the threshold, a
    refusal, a probe, a snapshot) ends the trust at once: this process then asks the store
    before each call again. So a breaker another replica opened goes unseen here for at most
    `trust_closed_s` (the trust runs from when the store was asked, however late it
    answered); one this process opens is seen by its next call. 0 asks the store before
    every call.
    """

    def __init__(
        self,
        store: BreakerStore,
        policy: BreakerPolicy,
        *,
        trust_closed_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if trust_closed_s < 0:
            raise ValueError("trust_closed_s must be >= 0")
        self.store = store
        self.policy = policy
        self.trust_closed_s = trust_closed_s
        self._clock = clock
        self._trusted_until: dict[str, float] = {}
        self._distrusts: dict[str, int] = {}
        """Per target, how often trust was ended: a closed answer asked for before the
        latest end (an open breaker seen meanwhile) is not trusted."""

    async def admit(self, target: str) -> bool:
        """Whether the call is a half-open probe; raise `CircuitOpen` when it may not run."""
        trusting = self.trust_closed_s > 0
        asked_at = self._clock() if trusting else 0.0
        if trusting and asked_at < self._trusted_until.get(target, 0.0):
            return False
        distrusts = self._distrusts.get(target, 0)
        verdict = await self.store.admit(target, self.policy)
        self._observe(target, verdict.state, verdict.changed)
        if verdict.state != "closed":
            self._distrust(target)
        elif trusting and self._distrusts.get(target, 0) == distrusts:
            # From the question, not the answer: the staleness bound holds however late
            # the answer came.
            self._trusted_until[target] = asked_at + self.trust_closed_s
        self.policy.check_admission(verdict, target)
        return verdict.probe

    async def record(self, target: str, *, ok: bool, probe: bool) -> None:
        """Report a call's outcome. A success outside a probe changes nothing: no round trip."""
        if ok and not probe:
            return
        if ok:
            change = await self.store.succeed(target, self.policy)
        else:
            change = await self.store.fail(target, self.policy)
        if change.state != "closed":
            self._distrust(target)
        self._observe(target, change.state, change.changed)

    async def snapshot(self) -> BreakerReport:
        """Every breaker with state (not closed, or failures counted), sorted by target."""
        report = await self.store.snapshot(self.policy)
        for shot in report.breakers:
            BREAKER_STATE.labels(shot.target).set(STATE_CODES[shot.state])
            if shot.state != "closed":
                self._distrust(shot.target)
        return BreakerReport(report.shared, sorted(report.breakers, key=lambda s: s.target))

    def _distrust(self, target: str) -> None:
        """The target is not closed: ask the store before its next call."""
        if self.trust_closed_s > 0:
            self._trusted_until.pop(target, None)
            self._distrusts[target] = self._distrusts.get(target, 0) + 1

    @staticmethod
    def _observe(target: str, state: BreakerState, changed: bool) -> None:
        BREAKER_STATE.labels(target).set(STATE_CODES[state])
        if changed:
            BREAKER_TRANSITIONS.labels(target, state).inc()


def counts_against_model(error: ProviderError) -> bool:
    """Whether a failed call says the model is unhealthy: everything but a bad request
    (the request's fault; the server answered)."""
    cause = error.cause if isinstance(error, CallFailed) else error
    return not isinstance(cause, ProviderBadRequest)


class BreakerGuard:
    """A `ModelClient` that fails fast with `CircuitOpen` while its model's breaker is open."""

    def __init__(self, client: ModelClient, breakers: Breakers, *, target: str) -> None:
        self.name = client.name
        self._client = client
        self._breakers = breakers
        self.target = target

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        probe = await self._breakers.admit(self.target)
        try:
            response = await self._client.complete(request, on_delta=on_delta)
        except ProviderError as exc:
            failed = counts_against_model(exc)
            await self._breakers.record(self.target, ok=not failed, probe=probe)
            raise
        await self._breakers.record(self.target, ok=True, probe=probe)
        return response
