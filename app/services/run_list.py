"""Listing a caller's runs, newest first, a page at a time."""

from __future__ import annotations

from app.api.run_list_schemas import RunQuery
from app.errors import InvalidRequest
from app.jobs.executor import RunExecutor
from app.services.auth import Principal
from app.services.runs import load_view
from app.store import runs as run_store
from app.store.views import RunView


async def list_runs(
    executor: RunExecutor, principal: Principal, query: RunQuery
) -> tuple[list[RunView], bool]:
    """The page of runs the query asks for, and whether more follow."""
    if query.user not in (None, principal.user_id):
        principal.require_admin("only admins list other users' runs")
    before = None
    async with executor.rt.db.read() as conn:
        if query.before is not None:
            anchor = await run_store.get_run(conn, query.before, principal.owner)
            if anchor is None:
                raise InvalidRequest(f"before: run {query.before} not found")
            before = (anchor.created_at, anchor.id)
        where = run_store.RunFilter(
            user_id=query.user,
            status=query.status,
            agent=query.agent,
            session_id=query.session_id,
            before=before,
        )
        found = await run_store.list_runs(conn, principal.owner, where, limit=query.limit + 1)
        page = found[: query.limit]
        # Pending approvals and webhook state, read only for the runs that have them.
        views = [await load_view(conn, run) for run in page]
    return views, len(found) > query.limit
