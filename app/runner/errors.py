"""Why a run ends `failed`, as types. `error_type` is the contract's `error.type`.

    RunFailure
    ├── MaxTurnsExceeded   max_turns_exceeded
    ├── RunTimeout         timeout
    ├── BudgetExceeded     budget_exceeded
    ├── LLMUnavailable     llm_unavailable
    ├── ToolErrorFailure   tool_error
    ├── Interrupted        interrupted
    ├── InvalidRun         validation_error
    └── InternalFailure    internal

`LeaseLost` and `StoreUnavailable` are not failures of the run: this worker no longer
owns it, or cannot reach the store that holds it, and must stop without writing anything
more; the run resumes from its last checkpoint.
"""

from __future__ import annotations

from typing import ClassVar


class RunFailure(Exception):
    """The run cannot go on; it ends `failed` with this error."""

    error_type: ClassVar[str] = "internal"


class MaxTurnsExceeded(RunFailure):
    error_type = "max_turns_exceeded"


class RunTimeout(RunFailure):
    error_type = "timeout"


class BudgetExceeded(RunFailure):
    error_type = "budget_exceeded"


class LLMUnavailable(RunFailure):
    error_type = "llm_unavailable"


class ToolErrorFailure(RunFailure):
    error_type = "tool_error"


class Interrupted(RunFailure):
    error_type = "interrupted"


class InvalidRun(RunFailure):
    error_type = "validation_error"


class InternalFailure(RunFailure):
    error_type = "internal"


class LeaseLost(Exception):
    """Another worker owns the run now; stop and write nothing."""


class StoreUnavailable(Exception):
    """The run's store cannot be reached (a database restart or failover): stop, write
    nothing more, and let the run be resumed from its last committed checkpoint."""
