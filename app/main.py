"""The application factory."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import (
    admin,
    approvals,
    experiments,
    feedback,
    jobs,
    keys,
    ops,
    policies,
    sessions,
    stream,
    sync,
    usage,
)
from app.api.limits import BodySizeLimit
from app.api.schemas import Problem
from app.api.sse import StreamingFastAPI
from app.api.strict import RejectNulInURL
from app.errors import TooManyRequests, install_error_handlers, problem_responses
from app.lifespan import make_lifespan
from app.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """Build the app for `settings`: lifespan, routers, error handlers."""
    # FastAPI that streams SSE responses after its stack has returned.
    app = StreamingFastAPI(
        title="agentsvc",
        version="0.1.0",
        summary="Run LLM agents safely: sync, jobs, webhooks and streaming over one runner.",
        lifespan=make_lifespan(settings),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RejectNulInURL)
    install_error_handlers(app)
    for router in (
        sync.router,
        jobs.router,
        stream.router,
        sessions.router,
        approvals.router,
        usage.router,
        admin.router,
        keys.router,
        policies.router,
        feedback.router,
        experiments.router,
    ):
        # Every authenticated route may answer 429 (rate limit; budget on new runs).
        app.include_router(router, responses=problem_responses(TooManyRequests))
    app.include_router(ops.router)
    _document_problem(app)
    return app


def _document_problem(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, object]:
        schema = original()
        components = schema.setdefault("components", {})
        assert isinstance(components, dict)
        components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
