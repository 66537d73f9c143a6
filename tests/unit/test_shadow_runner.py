"""A shadow run's tools: read-only ones execute, every other call is answered from the
live run's recorded result or not at all, and nothing waits for a human."""

from __future__ import annotations

from app.runner.protocols import Completed
from app.runner.shadow import NOT_EXECUTED, ShadowReplay, replay_key
from app.tools.base import Risk
from tests.support.runner_fakes import CountingTool, MemoryStore, ScriptedModel, text, tool_call
from tests.unit.test_runner import fresh, make_runner

LIVE = ShadowReplay.of(
    [
        ("write", {"text": "hello"}, "ok", "echo:hello"),
        ("write", {"text": "failed"}, "error", "disk full"),
    ]
)


def results(store: MemoryStore) -> list[tuple[str, str, str | None]]:
    return [
        (s.tool_call.name, s.tool_call.status, s.tool_call.result)
        for s in store.steps
        if s.tool_call is not None
    ]


async def test_side_effects_are_replayed_or_not_executed_and_reads_run() -> None:
    write = CountingTool("write")
    look = CountingTool("look", read_only=True)
    model = ScriptedModel(
        [
            tool_call("write", {"text": "hello"}),
            tool_call("write", {"text": "something new"}),
            tool_call("write", {"text": "failed"}),
            tool_call("look", {"text": "x"}),
            text("done"),
        ]
    )
    store = MemoryStore()
    outcome = await make_runner(model, store, [write, look], shadow=LIVE).run(fresh())

    assert outcome == Completed("done")
    assert write.calls == 0
    assert look.calls == 1
    assert results(store) == [
        ("write", "replayed", "echo:hello"),
        ("write", "simulated", NOT_EXECUTED.format(name="write")),
        # Only the live run's successes are replayed: a failure might not fail again.
        ("write", "simulated", NOT_EXECUTED.format(name="write")),
        ("look", "ok", "echo:x"),
    ]
    told = [m.content for m in model.requests[-1].messages if m.role == "tool"]
    assert told == [
        "echo:hello",
        "error: " + NOT_EXECUTED.format(name="write"),
        "error: " + NOT_EXECUTED.format(name="write"),
        "echo:x",
    ]


async def test_a_tool_that_needs_approval_never_pauses_a_shadow() -> None:
    risky = CountingTool("risky", risk=Risk.HIGH, read_only=True)
    model = ScriptedModel([tool_call("risky", {"text": "hello"}), text("done")])
    store = MemoryStore()
    outcome = await make_runner(model, store, [risky], shadow=LIVE).run(fresh())

    assert outcome == Completed("done")
    assert risky.calls == 0
    assert results(store) == [("risky", "simulated", NOT_EXECUTED.format(name="risky"))]


async def test_the_allowlist_still_refuses_in_a_shadow() -> None:
    write = CountingTool("write")
    model = ScriptedModel([tool_call("write", {"text": "hello"}), text("done")])
    store = MemoryStore()
    await make_runner(model, store, [write], allowed=set(), shadow=LIVE).run(fresh())

    assert write.calls == 0
    assert results(store)[0][1] == "refused"


async def test_live_runs_execute_every_tool() -> None:
    write = CountingTool("write")
    model = ScriptedModel([tool_call("write", {"text": "hello"}), text("done")])
    await make_runner(model, MemoryStore(), [write]).run(fresh())
    assert write.calls == 1


def test_replay_keys_ignore_argument_order() -> None:
    assert replay_key("t", {"a": 1, "b": [1, 2]}) == replay_key("t", {"b": [1, 2], "a": 1})
    assert replay_key("t", {"a": 1}) != replay_key("u", {"a": 1})
    assert replay_key("t", {"a": 1}) != replay_key("t", {"a": 2})
