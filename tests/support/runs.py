"""Runs written straight to the store, for tests that need a run in a given state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from app.store.runs import NewRun


def new_run(**fields: Any) -> NewRun:
    """A run of the built-in assistant by alice, pending, created now; `fields` override."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": "alice",
        "agent": "assistant",
        "agent_version": "1",
        "model": "local/local-1",
        "pattern": "sync",
        "status": "pending",
        "input": "What is 17*23?",
        "metadata": {},
        "max_turns": 8,
        "timeout_s": 60.0,
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    return NewRun(**values)
