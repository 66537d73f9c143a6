"""Turn and time limits of a run, as a value with precise checks."""

from __future__ import annotations

from dataclasses import dataclass

from app.runner.errors import MaxTurnsExceeded, RunTimeout


@dataclass(frozen=True, kw_only=True)
class RunLimits:
    """Limits every run is held to."""

    max_turns: int
    """LLM calls a run may make."""
    timeout_s: float
    """Wall-clock time from the run's start to its end."""
    llm_timeout_s: float
    """One LLM call."""

    def check_turns(self, turns_done: int) -> None:
        """Raise before an LLM call that would exceed `max_turns`."""
        if turns_done >= self.max_turns:
            raise MaxTurnsExceeded(f"the run reached its limit of {self.max_turns} turns")

    def check_deadline(self, remaining_s: float) -> None:
        """Raise when no time is left."""
        if remaining_s <= 0:
            raise RunTimeout(f"the run exceeded its time limit of {self.timeout_s:g} s")
