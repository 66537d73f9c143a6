"""An LLM call's tools, stored once per distinct set.

Every call of a run offers the same tools, and every run of an agent version the same ones:
their JSON schemas are most of a request (3.7 KB of the built-in assistant's 4 KB). The trace
row keeps the request with `tools_digest` (sha256 of the tools' JSON, sorted keys) in place
of `tools`, and `tool_sets` keeps each distinct set once, so the trace still shows exactly
what the model was offered (`get_trace` puts the tools back). A process remembers which
sets it has written and sends each one once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import orjson
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import ToolSet

tool_sets_t = cast(Table, ToolSet.__table__)

DIGEST_KEY = "tools_digest"
_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class ToolSetRow:
    digest: str
    tools: list[object]


def split_request(request: Mapping[str, object]) -> tuple[dict[str, object], ToolSetRow | None]:
    """The request as the trace row stores it, and the tool set it names (None: no tools)."""
    tools = request.get("tools")
    if not isinstance(tools, list) or not tools:
        return dict(request), None
    digest = hashlib.sha256(orjson.dumps(tools, option=orjson.OPT_SORT_KEYS)).hexdigest()
    stored = {k: v for k, v in request.items() if k != "tools"}
    stored[DIGEST_KEY] = digest
    return stored, ToolSetRow(digest, tools)


class ToolSetMemory:
    """The tool sets this process has written (at most the latest 10,000)."""

    def __init__(self) -> None:
        self._written: dict[str, None] = {}

    def unwritten(self, row: ToolSetRow | None) -> ToolSetRow | None:
        """`row` if this process has not written it yet."""
        return None if row is None or row.digest in self._written else row

    def written(self, row: ToolSetRow | None) -> None:
        if row is None:
            return
        self._written[row.digest] = None
        if len(self._written) > _MEMORY:
            del self._written[next(iter(self._written))]


async def write(conn: AsyncConnection, row: ToolSetRow, *, now: datetime) -> None:
    """Store the set unless it is there already."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        insert(tool_sets_t)
        .values(digest=row.digest, tools=row.tools, created_at=now)
        .on_conflict_do_nothing(index_elements=["digest"])
    )


async def restore_tools(conn: AsyncConnection, requests: Iterable[dict[str, object]]) -> None:
    """Put each request's tools back in place of their digest (in place)."""
    named = [r for r in requests if isinstance(r.get(DIGEST_KEY), str)]
    digests = {cast(str, r[DIGEST_KEY]) for r in named}
    if not digests:
        return
    rows = await conn.execute(
        select(tool_sets_t.c.digest, tool_sets_t.c.tools).where(tool_sets_t.c.digest.in_(digests))
    )
    tools: dict[str, object] = {row.digest: row.tools for row in rows}
    for request in named:
        digest = cast(str, request.pop(DIGEST_KEY))
        request["tools"] = tools.get(digest, [])
