"""Drives runs in this process: builds a GuardedRunner over the SQL store and runs it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from app.agents.definition import AgentVersion
from app.agents.registry import AgentRegistry
from app.guards.limits import RunLimits
from app.llm.providers import Providers
from app.runner.errors import LeaseLost
from app.runner.loop import GuardedRunner, RunSpec
from app.runner.protocols import EventSink
from app.runner.state import Checkpoint
from app.settings import Settings
from app.store.db import Database
from app.store.run_store import SqlRunStore
from app.tools.base import ToolContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """What every run needs, built once in the lifespan."""

    settings: Settings
    db: Database
    providers: Providers
    registry: AgentRegistry
    tool_context: ToolContext
    sink: EventSink | None = None


def build_spec(
    rt: Runtime,
    *,
    run_id: str,
    version: AgentVersion,
    model_ref: str,
    max_turns: int,
    timeout_s: float,
    stream: bool = False,
) -> RunSpec:
    """The runner's view of a run: resolved model, allowlist and limits."""
    provider, _, model = model_ref.partition("/")
    return RunSpec(
        run_id=run_id,
        provider=provider,
        model=model,
        tools=frozenset(version.tools),
        limits=RunLimits(
            max_turns=max_turns, timeout_s=timeout_s, llm_timeout_s=rt.settings.llm_timeout_s
        ),
        temperature=version.temperature,
        max_output_tokens=version.max_output_tokens,
        stream=stream,
    )


class RunExecutor:
    """Runs started by this process, as asyncio tasks; each holds its run's lease."""

    def __init__(self, rt: Runtime, *, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, spec: RunSpec, checkpoint: Checkpoint, *, attempt: int, elapsed_s: float = 0.0
    ) -> asyncio.Task[None]:
        """Start driving the run; `elapsed_s` is run time already used (on resume)."""
        client, _ = self.rt.providers.resolve(f"{spec.provider}/{spec.model}")
        runner = GuardedRunner(
            spec,
            model=client,
            tools=self.rt.registry.tools,
            tool_context=self.rt.tool_context,
            store=SqlRunStore(self.rt.db, run_id=spec.run_id, owner=self.owner, attempt=attempt),
            deadline=time.monotonic() + spec.limits.timeout_s - elapsed_s,
            sink=self.rt.sink,
        )
        task = asyncio.create_task(self._drive(runner, checkpoint, spec.run_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _drive(self, runner: GuardedRunner, checkpoint: Checkpoint, run_id: str) -> None:
        try:
            await runner.run(checkpoint)
        except LeaseLost:
            log.warning("run %s: lease lost, stopped without writing", run_id)
        except Exception:
            # The database refused the final write; the lease expiry hands the run on.
            log.exception("run %s: could not record its end", run_id)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Give running runs `grace_s` to end, then cancel them."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
