"""The guarded runner end to end with a scripted model and an in-memory store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.guards.limits import RunLimits
from app.llm.errors import ProviderServerError
from app.llm.types import Message, ToolCall
from app.runner.errors import LeaseLost, StoreUnavailable
from app.runner.events import EventType
from app.runner.loop import GuardedRunner, RunSpec, start_run
from app.runner.protocols import ApprovalDecision, Cancelled, Completed, Failed, Paused, Suspended
from app.runner.shadow import ShadowReplay
from app.runner.state import Checkpoint
from app.tools.base import Risk, ToolContext, ToolFailure, ToolRegistry
from tests.support.runner_fakes import (
    CountingTool,
    MemoryStore,
    ScriptedModel,
    text,
    tool_call,
)

RUN_ID = "00000000-0000-0000-0000-000000000001"


def make_runner(
    model: ScriptedModel,
    store: MemoryStore,
    tools: list[CountingTool],
    *,
    allowed: set[str] | None = None,
    max_turns: int = 5,
    timeout_s: float = 5.0,
    llm_timeout_s: float = 5.0,
    tool_timeout_s: float = 5.0,
    stream: bool = False,
    decisions: dict[str, ApprovalDecision] | None = None,
    shadow: ShadowReplay | None = None,
) -> GuardedRunner:
    registry = ToolRegistry()
    for t in tools:
        registry.add(t.tool(timeout_s=tool_timeout_s))
    spec = RunSpec(
        run_id=RUN_ID,
        provider="scripted",
        model="m",
        tools=frozenset(allowed if allowed is not None else {t.name for t in tools}),
        limits=RunLimits(max_turns=max_turns, timeout_s=timeout_s, llm_timeout_s=llm_timeout_s),
        stream=stream,
        shadow=shadow,
    )
    ctx = ToolContext(sandbox_dir=Path("/nonexistent"), http=httpx.AsyncClient())
    return GuardedRunner(
        spec, model=model, tools=registry, tool_context=ctx, store=store, decisions=decisions
    )


def fresh() -> Checkpoint:
    cp, _ = start_run(run_id=RUN_ID, instructions="be brief", user_input="hi", data={})
    return cp


def types(store: MemoryStore) -> list[str]:
    return [e.type.value for e in store.events]


async def test_tool_then_answer_commits_every_call_with_ordered_events() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([tool_call("echo", {"text": "x"}), text("done")])
    store = MemoryStore()
    outcome = await make_runner(model, store, [echo]).run(fresh())

    assert outcome == Completed("done")
    assert echo.calls == 1
    assert types(store) == [
        "llm.call",
        "tool.call",
        "tool.result",
        "llm.call",
        "run.completed",
    ]
    seqs = [e.seq for e in store.events]
    assert seqs == list(range(1, len(seqs) + 1))
    # One commit per LLM call and per tool call; the last carries the outcome.
    assert [s.llm_call is not None for s in store.steps] == [True, False, True]
    assert store.steps[1].tool_call is not None
    assert store.steps[1].tool_call.status == "ok"
    assert store.steps[-1].outcome == Completed("done")
    tool_msg = model.requests[1].messages[-1]
    assert tool_msg.role == "tool"
    assert tool_msg.content == "echo:x"
    final = store.steps[-1].checkpoint
    assert final.usage.llm_calls == 2
    assert final.usage.tool_calls == 1
    assert final.turn == 2


async def test_tool_not_on_allowlist_is_never_executed() -> None:
    secret = CountingTool("secret")
    model = ScriptedModel([tool_call("secret", {"text": "x"}), text("ok")])
    store = MemoryStore()
    outcome = await make_runner(model, store, [secret], allowed=set()).run(fresh())

    assert outcome == Completed("ok")
    assert secret.calls == 0
    record = store.steps[1].tool_call
    assert record is not None
    assert record.status == "refused"
    told = model.requests[1].messages[-1].content or ""
    assert "not available" in told


async def test_invalid_arguments_are_never_executed() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([tool_call("echo", {"text": 5, "extra": 1}), text("ok")])
    store = MemoryStore()
    await make_runner(model, store, [echo]).run(fresh())

    assert echo.calls == 0
    record = store.steps[1].tool_call
    assert record is not None
    assert record.status == "invalid"
    assert "text" in (record.result or "")


async def test_non_object_arguments_are_invalid() -> None:
    echo = CountingTool("echo")
    bad = text("unused").model_copy(
        update={
            "message": Message(
                role="assistant",
                tool_calls=(ToolCall(id="c1", name="echo", raw_arguments="[1, 2"),),
            )
        }
    )
    model = ScriptedModel([bad, text("ok")])
    store = MemoryStore()
    await make_runner(model, store, [echo]).run(fresh())
    assert echo.calls == 0
    assert store.steps[1].tool_call is not None
    assert store.steps[1].tool_call.status == "invalid"


async def test_high_risk_tool_pauses_for_approval_without_running() -> None:
    danger = CountingTool("danger", risk=Risk.HIGH)
    model = ScriptedModel([tool_call("danger", {"text": "x"})])
    store = MemoryStore()
    outcome = await make_runner(model, store, [danger]).run(fresh())

    assert isinstance(outcome, Paused)
    assert outcome.approval.tool == "danger"
    assert outcome.approval.arguments == {"text": "x"}
    assert outcome.approval.key == f"{RUN_ID}:1:0"
    assert danger.calls == 0
    assert types(store)[-2:] == ["tool.call", "approval.required"]
    assert store.steps[-1].outcome == outcome


@pytest.mark.parametrize(
    ("decision", "calls", "told"),
    [
        (ApprovalDecision(status="approved"), 1, "echo:x"),
        (ApprovalDecision(status="approved", arguments={"text": "edited"}), 1, "echo:edited"),
        (ApprovalDecision(status="approved", arguments={"bad": 1}), 0, "invalid arguments"),
        (
            ApprovalDecision(status="denied", reason="too risky"),
            0,
            "denied running danger: too risky",
        ),
        (ApprovalDecision(status="expired"), 0, "nobody approved"),
    ],
)
async def test_resume_after_decision(decision: ApprovalDecision, calls: int, told: str) -> None:
    danger = CountingTool("danger", risk=Risk.HIGH)
    model = ScriptedModel([text("after")])
    store = MemoryStore()
    runner = make_runner(model, store, [danger], decisions={f"{RUN_ID}:1:0": decision})
    cp = interrupted_checkpoint("danger")
    outcome = await runner.run(cp)

    assert outcome == Completed("after")
    assert danger.calls == calls
    assert told in (model.requests[0].messages[-1].content or "")


async def test_cancel_reported_by_the_store_stops_at_the_next_step() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([tool_call("echo", {"text": "x"}), text("never")])
    store = MemoryStore(cancel_after=1)
    outcome = await make_runner(model, store, [echo]).run(fresh())

    assert outcome == Cancelled()
    assert echo.calls == 0
    assert types(store) == ["llm.call", "run.cancelled"]
    assert store.steps[-1].checkpoint.usage.llm_calls == 1


async def test_cancel_aborts_an_in_flight_llm_call() -> None:
    import asyncio

    model = ScriptedModel([30.0])
    store = MemoryStore()
    runner = make_runner(model, store, [])
    task = asyncio.create_task(runner.run(fresh()))
    await asyncio.sleep(0.05)
    runner.stop("cancel")
    outcome = await asyncio.wait_for(task, 2)

    assert outcome == Cancelled()
    assert types(store) == ["run.cancelled"]
    assert store.steps[-1].llm_call is not None
    assert "cancel" in (store.steps[-1].llm_call.error or "")


async def test_suspend_finishes_the_current_step_and_hands_back() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([tool_call("echo", {"text": "x"}), text("later")])
    store = MemoryStore()
    runner = make_runner(model, store, [echo])
    original = model.complete

    async def complete_then_suspend(*args: object, **kwargs: object) -> object:
        runner.stop("suspend")
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    model.complete = complete_then_suspend  # type: ignore[method-assign,assignment]
    outcome = await runner.run(fresh())

    assert outcome == Suspended()
    assert echo.calls == 0
    assert store.steps[-1].checkpoint.turn == 1
    assert store.steps[-1].checkpoint.elapsed_s > 0


async def test_max_turns_fails_the_run() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([tool_call("echo", {"text": "x"}) for _ in range(3)])
    store = MemoryStore()
    outcome = await make_runner(model, store, [echo], max_turns=2).run(fresh())

    assert isinstance(outcome, Failed)
    assert outcome.error_type == "max_turns_exceeded"
    assert len(model.requests) == 2
    assert types(store)[-1] == "run.failed"


async def test_run_timeout_during_llm_call() -> None:
    model = ScriptedModel([10.0])
    store = MemoryStore()
    outcome = await make_runner(model, store, [], timeout_s=0.05).run(fresh())

    assert isinstance(outcome, Failed)
    assert outcome.error_type == "timeout"


async def test_llm_call_timeout_is_llm_unavailable() -> None:
    model = ScriptedModel([10.0])
    store = MemoryStore()
    outcome = await make_runner(model, store, [], llm_timeout_s=0.05).run(fresh())

    assert isinstance(outcome, Failed)
    assert outcome.error_type == "llm_unavailable"
    record = store.steps[-1].llm_call
    assert record is not None
    assert record.error is not None


async def test_provider_error_fails_with_trace() -> None:
    model = ScriptedModel([ProviderServerError("boom", provider="scripted", status_code=500)])
    store = MemoryStore()
    outcome = await make_runner(model, store, []).run(fresh())

    assert isinstance(outcome, Failed)
    assert outcome.error_type == "llm_unavailable"
    assert "boom" in outcome.message
    assert store.steps[-1].llm_call is not None


async def test_tool_timeout_is_reported_to_the_model() -> None:
    slow = CountingTool("slow", sleep_s=10.0)
    model = ScriptedModel([tool_call("slow", {"text": "x"}), text("recovered")])
    store = MemoryStore()
    outcome = await make_runner(model, store, [slow], tool_timeout_s=0.05).run(fresh())

    assert outcome == Completed("recovered")
    record = store.steps[1].tool_call
    assert record is not None
    assert record.status == "error"
    assert "timed out" in (model.requests[1].messages[-1].content or "")


@pytest.mark.parametrize(
    ("error", "expected"),
    [(ToolFailure("no such file"), "no such file"), (RuntimeError("x"), "unexpectedly")],
)
async def test_tool_errors_are_reported_to_the_model(error: Exception, expected: str) -> None:
    broken = CountingTool("broken", error=error)
    model = ScriptedModel([tool_call("broken", {"text": "x"}), text("ok")])
    store = MemoryStore()
    await make_runner(model, store, [broken]).run(fresh())
    assert expected in (model.requests[1].messages[-1].content or "")


def interrupted_checkpoint(name: str) -> Checkpoint:
    cp = fresh()
    cp.messages.append(
        Message(
            role="assistant", tool_calls=(ToolCall(id="c1", name=name, arguments={"text": "x"}),)
        )
    )
    cp.turn = 1
    return cp


async def test_resume_runs_unanswered_tool_call_then_continues() -> None:
    echo = CountingTool("echo")
    model = ScriptedModel([text("after resume")])
    store = MemoryStore()
    outcome = await make_runner(model, store, [echo]).run(interrupted_checkpoint("echo"))

    assert outcome == Completed("after resume")
    assert echo.calls == 1
    assert len(model.requests) == 1


@pytest.mark.parametrize(("idempotent", "runs"), [(True, 1), (False, 0)])
async def test_resume_with_started_intent(idempotent: bool, runs: int) -> None:
    tool = CountingTool("act", idempotent=idempotent)
    model = ScriptedModel([text("ok")])
    store = MemoryStore()
    runner = make_runner(model, store, [tool])
    key = f"{RUN_ID}:1:0"
    from app.runner.protocols import ToolCallRecord

    store.intents[key] = ToolCallRecord(
        key=key, turn=1, index=0, call_id="c1", name="act", arguments={}, status="started"
    )
    await runner.run(interrupted_checkpoint("act"))

    assert tool.calls == runs
    record = store.steps[0].tool_call
    assert record is not None
    assert record.status == ("ok" if idempotent else "in_doubt")


@pytest.mark.parametrize("refusal", [LeaseLost, StoreUnavailable])
async def test_a_refused_write_stops_the_run_without_writing(
    refusal: type[Exception],
) -> None:
    """Neither a lost lease nor an unreachable store is the run's failure: it stops where
    it is, to be resumed from its last checkpoint, and writes no `failed` end."""
    model = ScriptedModel([text("x")])
    store = MemoryStore(refuse=refusal)
    with pytest.raises(refusal):
        await make_runner(model, store, []).run(fresh())
    assert store.steps == []


async def test_streaming_emits_deltas_before_the_call_event() -> None:
    model = ScriptedModel([text("hello world")], deltas=["hel", "lo ", "world"])
    store = MemoryStore()
    await make_runner(model, store, [], stream=True).run(fresh())

    kinds = types(store)
    assert kinds[-2:] == ["llm.call", "run.completed"]
    deltas = store.events[:-2]
    assert len(deltas) >= 2
    assert set(kinds[:-2]) == {"llm.delta"}
    # The output filter may hold a tail back until later text settles it; nothing is lost.
    assert "".join(str(e.data["text"]) for e in deltas) == "hello world"
    assert [e.seq for e in store.events] == list(range(1, len(kinds) + 1))


async def test_streamed_text_never_shows_a_secret_split_across_chunks() -> None:
    answer = "mail jane.doe@example.com or call +1 415 555 0134 today"
    pieces = [answer[i : i + 3] for i in range(0, len(answer), 3)]
    model = ScriptedModel([text(answer)], deltas=pieces)
    store = MemoryStore()
    await make_runner(model, store, [], stream=True).run(fresh())

    shown = [str(e.data["text"]) for e in store.events if e.type is EventType.LLM_DELTA]
    assert "".join(shown) == "mail [EMAIL_REDACTED] or call [PHONE_REDACTED] today"
    texts = [
        str(e.data.get("text") or e.data.get("content") or e.data.get("result"))
        for e in store.events
    ]
    for secret in ("jane", "example.com", "415 555"):
        assert not [t for t in texts if secret in t]
    assert store.steps[-1].outcome == Completed(
        "mail [EMAIL_REDACTED] or call [PHONE_REDACTED] today"
    )


def test_start_run_event_and_checkpoint() -> None:
    cp, event = start_run(run_id=RUN_ID, instructions="sys", user_input="hi", data={"a": 1})
    assert event.type is EventType.RUN_STARTED
    assert event.seq == 0
    assert cp.next_seq == 1
    assert [m.role for m in cp.messages] == ["system", "user"]
    assert event.payload() == {"job_id": RUN_ID, "seq": 0, "type": "run.started", "a": 1}


async def test_the_trace_keeps_the_whole_request_with_tools_built_once_per_set() -> None:
    echo, other = CountingTool("echo"), CountingTool("other")
    model = ScriptedModel([text("one"), text("two")])
    store = MemoryStore()
    runner = make_runner(model, store, [echo, other], allowed={"echo", "other", "missing"})
    await runner.run(fresh())
    await make_runner(model, store, [echo, other]).run(fresh())

    calls = [s.llm_call for s in store.steps if s.llm_call is not None]
    assert len(calls) == 2
    # Exactly what the model was sent, tools included, sorted by name; unknown names left out.
    for call, request in zip(calls, model.requests, strict=True):
        assert call.request == request.model_dump(mode="json", exclude_none=True)
        assert [t.name for t in request.tools] == ["echo", "other"]
    registry = ToolRegistry()
    registry.add(echo.tool())
    offer = registry.offer({"echo", "missing"})
    assert registry.offer(["missing", "echo"]) is offer
    registry.add(other.tool())
    assert [s.name for s in registry.offer({"echo", "other"}).specs] == ["echo", "other"]
