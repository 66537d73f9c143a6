"""A run's trace rows (`llm_calls`, `tool_calls`) as the run's store writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.runner.protocols import LLMCallRecord, ToolCallRecord
from app.store.db import fitted
from app.store.runs import tool_calls_t
from app.store.tool_sets import ToolSetRow, split_request

_TOOL_RESULT_COLUMNS = ("status", "result", "latency_ms", "finished_at")


def llm_call_row(
    run_id: uuid.UUID, c: LLMCallRecord
) -> tuple[dict[str, object], ToolSetRow | None]:
    """The trace row (its request naming its tools by digest) and the tools it names."""
    request, tool_set = split_request(c.request)
    return {
        "run_id": run_id,
        "turn": c.turn,
        "provider": c.provider,
        "model": c.model,
        "request": request,
        "response": c.response,
        "input_tokens": c.usage.input_tokens,
        "output_tokens": c.usage.output_tokens,
        "cached_tokens": c.usage.cached_tokens,
        "cost_usd": c.cost_usd,
        "priced": c.priced,
        "latency_ms": c.latency_ms,
        "error": c.error,
        "cache_hit": c.cache_hit,
    }, tool_set


def tool_call_row(run_id: uuid.UUID, record: ToolCallRecord) -> dict[str, object]:
    """The tool call's row: an intent (`started`) or its result."""
    finished = None if record.status == "started" else datetime.now(UTC)
    return {
        "run_id": run_id,
        "idempotency_key": record.key,
        "turn": record.turn,
        "call_index": record.index,
        "call_id": fitted(record.call_id, tool_calls_t.c.call_id),
        "name": fitted(record.name, tool_calls_t.c.name),
        "arguments": record.arguments,
        "status": record.status,
        "result": record.result,
        "latency_ms": record.latency_ms,
        "finished_at": finished,
    }


async def upsert_tool_call(
    conn: AsyncConnection, run_id: uuid.UUID, record: ToolCallRecord, *, postgres: bool
) -> None:
    """Write the call's result over its intent (or the whole row when there was none)."""
    values = tool_call_row(run_id, record)
    stmt = (postgresql if postgres else sqlite).insert(tool_calls_t).values(values)
    changed = {k: values[k] for k in _TOOL_RESULT_COLUMNS}
    await conn.execute(stmt.on_conflict_do_update(index_elements=["idempotency_key"], set_=changed))
