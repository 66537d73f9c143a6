"""The baseline: a bare FastAPI `POST /agent` with no database, no auth, no LLM.

It validates a body shaped like agentsvc's `RunCreate` with a pydantic model and
answers a `RunRead`-shaped JSON of about the same size, so the ratio against
agentsvc is what agentsvc adds on top of FastAPI, pydantic and uvicorn.

`python -m bench.bare_app --port 8102` serves it exactly as `agentsvc serve`
serves agentsvc (one process, `uvicorn.run(app, proxy_headers=True)`); with several
processes, both are served by `uvicorn --factory --workers N` (see `bench.servers`).
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from bench.llm_server import ANSWER_TEXT, COMPLETION_TOKENS, PROMPT_TOKENS

MetadataValue = str | int | float | bool | None


class AgentRequest(BaseModel):
    """Same fields and constraints as `app.api.schemas.RunCreate`."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=128)
    input: str = Field(min_length=1, max_length=200_000)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)
    max_turns: int | None = Field(default=None, ge=1, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    llm_calls: int
    tool_calls: int


class Result(BaseModel):
    output: str


class AgentAnswer(BaseModel):
    """Same shape as `app.api.schemas.RunRead` (nested models, datetimes)."""

    job_id: str
    agent: str
    agent_version: str
    model: str
    status: Literal["completed"]
    result: Result | None
    error: None
    usage: Usage
    turns: int
    metadata: dict[str, MetadataValue]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def create_app() -> FastAPI:
    """The baseline app (also the `uvicorn --factory` entry point)."""
    app = FastAPI(title="bare")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/agent", response_model=AgentAnswer)
    async def run_agent(body: AgentRequest) -> AgentAnswer:
        now = datetime.now(UTC)
        return AgentAnswer(
            job_id=str(uuid.uuid4()),
            agent=body.agent,
            agent_version="1",
            model="openai/bench-model",
            status="completed",
            result=Result(output=ANSWER_TEXT),
            error=None,
            usage=Usage(
                input_tokens=PROMPT_TOKENS,
                output_tokens=COMPLETION_TOKENS,
                cached_tokens=0,
                cost_usd=0.0,
                llm_calls=1,
                tool_calls=0,
            ),
            turns=1,
            metadata=body.metadata,
            created_at=now,
            started_at=now,
            finished_at=now,
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the bare FastAPI baseline.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    import uvicorn

    # The same call as `agentsvc serve` (app/cli.py), so both get the same loop and parser.
    uvicorn.run(
        create_app(), host=args.host, port=args.port, log_level=args.log_level, proxy_headers=True
    )


if __name__ == "__main__":
    main()
