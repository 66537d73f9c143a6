"""Turn, time, token and cost limits of a run, as a value with precise checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from app.guards.budget import CallEstimate, RunCostExceeded, RunTokensExceeded
from app.runner.errors import MaxTurnsExceeded, RunTimeout

_Cap = TypeVar("_Cap", int, float)


@dataclass(frozen=True, kw_only=True)
class RunLimits:
    """Limits every run is held to."""

    max_turns: int
    """LLM calls a run may make."""
    timeout_s: float
    """Wall-clock time from the run's start to its end."""
    llm_timeout_s: float
    """One LLM call."""
    max_run_tokens: int | None = None
    """Tokens (input + output) the run may use; None: no cap."""
    max_run_cost_usd: float | None = None
    """USD the run may cost; None: no cap."""

    def check_turns(self, turns_done: int) -> None:
        """Raise before an LLM call that would exceed `max_turns`."""
        if turns_done >= self.max_turns:
            raise MaxTurnsExceeded(f"the run reached its limit of {self.max_turns} turns")

    def check_deadline(self, remaining_s: float) -> None:
        """Raise when no time is left."""
        if remaining_s <= 0:
            raise RunTimeout(f"the run exceeded its time limit of {self.timeout_s:g} s")

    def check_spend(
        self, *, tokens: int, cost_usd: float, next_call: CallEstimate, next_cost_usd: float
    ) -> None:
        """Raise before an LLM call whose worst case (`next_call`, costing `next_cost_usd`)
        would take the run's `tokens` or `cost_usd` so far past a cap."""
        cap = self.max_run_tokens
        if cap is not None and tokens + next_call.tokens > cap:
            raise RunTokensExceeded(
                f"the run's token cap of {cap} would be exceeded: {tokens} used, "
                f"the next call may use {next_call.tokens}"
            )
        usd = self.max_run_cost_usd
        if usd is not None and cost_usd + next_cost_usd > usd:
            raise RunCostExceeded(
                f"the run's cost cap of ${usd:g} would be exceeded: ${cost_usd:.6f} spent, "
                f"the next call may cost ${next_cost_usd:.6f}"
            )


def lowest(*caps: _Cap | None) -> _Cap | None:
    """The strictest of the caps that are set (None when none is)."""
    present = [c for c in caps if c is not None]
    return min(present) if present else None
