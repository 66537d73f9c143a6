"""The tool half of a step: guard, approval, intent, execution, result."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import assert_never

from pydantic import ValidationError

from app.guards.tools import Allow, Reject, RequireApproval, check_tool_call, describe_errors
from app.llm.types import Message, ToolCall
from app.runner.base import RunnerBase
from app.runner.events import EventType, RunEvent
from app.runner.protocols import ApprovalRequest, Paused, Step, ToolCallRecord, ToolStatus
from app.runner.state import Checkpoint
from app.runner.tool_exec import DENIED, EXPIRED, IN_DOUBT, execute_tool
from app.tools.base import Tool


class ToolSteps(RunnerBase):
    """Runs the tool calls the model asked for, one committed step each."""

    async def _tool_step(self, cp: Checkpoint, index: int, call: ToolCall) -> Paused | None:
        """Guard, record the intent, execute and commit one tool call; Paused if it needs
        a human decision first."""
        key = f"{self._spec.run_id}:{cp.turn}:{index}"
        call_data: dict[str, object] = {
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "index": index,
        }
        call_event = self._event(cp, EventType.TOOL_CALL, call_data)
        decision = check_tool_call(call, allowed=self._spec.tools, registry=self._tools)
        if self._spec.shadow is not None and _changes_something(decision):
            assert not isinstance(decision, Reject)
            await self._shadow_tool(cp, key, index, call, decision, call_event)
            return None
        match decision:
            case Reject(verdict, message):
                await self._tool_done(cp, key, index, call, verdict, message, None, [call_event])
            case Allow(tool, args):
                await self._run_tool(
                    cp, key, index, call, tool, args.model_dump(mode="json"), call_event
                )
            case RequireApproval(tool, args):
                decided = self._decisions.get(key)
                if decided is None:
                    request = ApprovalRequest(
                        id=str(uuid.uuid4()),
                        key=key,
                        call_id=call.id,
                        tool=tool.name,
                        arguments=args.model_dump(mode="json"),
                    )
                    asked = self._event(
                        cp,
                        EventType.APPROVAL_REQUIRED,
                        {
                            "approval_id": request.id,
                            "name": tool.name,
                            "arguments": request.arguments,
                        },
                    )
                    paused = Paused(request)
                    await self._finish(cp, paused, events=[call_event, asked])
                    return paused
                if decided.status == "approved":
                    arguments = (
                        decided.arguments if decided.arguments is not None else call.arguments
                    )
                    await self._run_tool(cp, key, index, call, tool, arguments, call_event)
                else:
                    reason = f": {decided.reason}" if decided.reason else ""
                    template = DENIED if decided.status == "denied" else EXPIRED
                    message = template.format(name=tool.name, reason=reason)
                    await self._tool_done(
                        cp, key, index, call, "refused", message, None, [call_event]
                    )
            case _:
                assert_never(decision)
        return None

    async def _shadow_tool(
        self,
        cp: Checkpoint,
        key: str,
        index: int,
        call: ToolCall,
        decision: Allow | RequireApproval,
        call_event: RunEvent,
    ) -> None:
        """A shadow run's call answered from the live run's result, or not at all."""
        assert self._spec.shadow is not None
        arguments = decision.args.model_dump(mode="json")
        replayed, text = self._spec.shadow.answer(decision.tool.name, arguments)
        status: ToolStatus = "replayed" if replayed else "simulated"
        await self._tool_done(cp, key, index, call, status, text, None, [call_event])

    async def _run_tool(
        self,
        cp: Checkpoint,
        key: str,
        index: int,
        call: ToolCall,
        tool: Tool,
        arguments: dict[str, object],
        call_event: RunEvent,
    ) -> None:
        try:
            args = tool.args_model.model_validate(arguments)
        except ValidationError as exc:
            message = f"invalid arguments for {tool.name}: {describe_errors(exc)}"
            await self._tool_done(cp, key, index, call, "invalid", message, None, [call_event])
            return
        intent = ToolCallRecord(
            key=key,
            turn=cp.turn,
            index=index,
            call_id=call.id,
            name=call.name,
            arguments=args.model_dump(mode="json"),
            status="started",
        )
        prior = await self._store.begin_tool_call(intent, cp, [call_event])
        await self._publish([call_event])
        if prior is not None and not tool.idempotent:
            message = IN_DOUBT.format(name=tool.name)
            await self._tool_done(cp, key, index, call, "in_doubt", message, None, [])
            return
        remaining = self._remaining()
        result = await execute_tool(
            tool,
            args,
            replace(self._ctx, idempotency_key=key),
            timeout_s=min(tool.timeout_s, remaining),
            run_timeout=remaining < tool.timeout_s,
        )
        if result.hit_deadline:
            raise self._timeout_failure()
        await self._tool_done(
            cp, key, index, call, result.status, result.text, result.latency_ms, []
        )

    async def _tool_done(
        self,
        cp: Checkpoint,
        key: str,
        index: int,
        call: ToolCall,
        status: ToolStatus,
        text: str,
        latency_ms: float | None,
        events: list[RunEvent],
    ) -> None:
        content = text if status in ("ok", "replayed") else f"error: {text}"
        cp.messages.append(
            Message(role="tool", content=content, tool_call_id=call.id, name=call.name)
        )
        cp.usage.tool_calls += 1
        record = ToolCallRecord(
            key=key,
            turn=cp.turn,
            index=index,
            call_id=call.id,
            name=call.name,
            arguments=call.arguments,
            status=status,
            result=text,
            latency_ms=latency_ms,
        )
        result_event = self._event(
            cp,
            EventType.TOOL_RESULT,
            {
                "call_id": call.id,
                "name": call.name,
                "status": status,
                "result": text,
                "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            },
        )
        await self._commit(Step(checkpoint=cp, events=[*events, result_event], tool_call=record))


def _changes_something(decision: Allow | Reject | RequireApproval) -> bool:
    """Whether running the call could change the world: any tool not declared read-only,
    and any call that needs a human's approval."""
    match decision:
        case Reject():
            return False
        case Allow(tool, _):
            return not tool.read_only
        case RequireApproval():
            return True
        case _:
            assert_never(decision)
