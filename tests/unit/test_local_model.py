"""The offline `local` model: its rules, its usage and its streaming."""

from __future__ import annotations

import pytest

from app.llm.local import LocalProvider, split_chunks
from app.llm.types import LLMRequest, Message, ToolCall, ToolSpec

EXAMPLE_TOOLS = tuple(
    ToolSpec(name=name, description=f"the {name} tool", parameters={"type": "object"})
    for name in (
        "calculator",
        "current_time",
        "read_file",
        "write_file",
        "delete_file",
        "http_get",
    )
)


def ask(text: str, *, tools: tuple[ToolSpec, ...] = EXAMPLE_TOOLS) -> LLMRequest:
    return LLMRequest(
        provider="local",
        model="demo",
        messages=(
            Message(role="system", content="You are a helpful agent."),
            Message(role="user", content=text),
        ),
        tools=tools,
    )


def with_result(request: LLMRequest, call: ToolCall, result: str) -> LLMRequest:
    messages = (
        *request.messages,
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", tool_call_id=call.id, name=call.name, content=result),
    )
    return request.model_copy(update={"messages": messages})


async def test_arithmetic_calls_the_calculator() -> None:
    response = await LocalProvider().complete(ask("What is 17*23?"))

    assert response.message.content is None
    assert response.message.tool_calls == (
        ToolCall(id="call_1_0", name="calculator", arguments={"expression": "17*23"}),
    )
    assert response.finish_reason == "tool_calls"
    assert response.model == "demo"


async def test_a_calculator_result_becomes_the_answer() -> None:
    request = ask("What is 17*23?")
    first = await LocalProvider().complete(request)

    final = await LocalProvider().complete(with_result(request, first.message.tool_calls[0], "391"))

    assert final.message.content == "The result is 391."
    assert final.message.tool_calls == ()
    assert final.finish_reason == "stop"


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        ("Error: division by zero", "The tool failed: division by zero"),
        ('{"error": "timed out"}', "The tool failed: timed out"),
    ],
)
async def test_a_failed_tool_is_reported(result: str, answer: str) -> None:
    call = ToolCall(id="call_1_0", name="calculator", arguments={"expression": "1/0"})
    response = await LocalProvider().complete(with_result(ask("compute 1/0"), call, result))
    assert response.message.content == answer


async def test_other_results_are_quoted_with_the_tool_name() -> None:
    call = ToolCall(id="call_1_0", name="read_file", arguments={"path": "notes.txt"})
    request = with_result(ask("read notes.txt"), call, "buy milk")
    response = await LocalProvider().complete(request)
    assert response.message.content == "read_file returned: buy milk"


async def test_without_the_calculator_it_answers_in_text() -> None:
    response = await LocalProvider().complete(ask("What is 17*23?", tools=()))

    assert response.message.tool_calls == ()
    assert response.message.content == "You said: What is 17*23?"


async def test_tool_choice_none_forbids_tool_calls() -> None:
    request = ask("What is 17*23?").model_copy(update={"tool_choice": "none"})
    response = await LocalProvider().complete(request)
    assert response.message.tool_calls == ()


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("compute (2+3)*4", "calculator", {"expression": "(2+3)*4"}),
        ("what is 6 x 7?", "calculator", {"expression": "6*7"}),
        ("and 2 ** 10 × 3.", "calculator", {"expression": "2 ** 10*3"}),
        ("What time is it?", "current_time", {"timezone": "UTC"}),
        ("What's the date in Europe/Paris?", "current_time", {"timezone": "Europe/Paris"}),
        ("read file notes/todo.txt", "read_file", {"path": "notes/todo.txt"}),
        ("Please read notes.txt.", "read_file", {"path": "notes.txt"}),
        (
            "write hello world to out.txt",
            "write_file",
            {"path": "out.txt", "content": "hello world"},
        ),
        ("write 'a to b' to x.md", "write_file", {"path": "x.md", "content": "a to b"}),
        ("delete old.log", "delete_file", {"path": "old.log"}),
        (
            "fetch https://example.com/a.json, please",
            "http_get",
            {"url": "https://example.com/a.json"},
        ),
    ],
)
async def test_rules_pick_the_tool_and_arguments(
    text: str, tool: str, arguments: dict[str, object]
) -> None:
    response = await LocalProvider().complete(ask(text))
    assert [(c.name, c.arguments) for c in response.message.tool_calls] == [(tool, arguments)]


async def test_call_ids_follow_the_turn() -> None:
    call = ToolCall(id="call_1_0", name="read_file", arguments={"path": "a.txt"})
    request = with_result(ask("read a.txt"), call, "x")
    follow_up = request.model_copy(
        update={"messages": (*request.messages, Message(role="user", content="now 2+2"))}
    )
    response = await LocalProvider().complete(follow_up)
    assert response.message.tool_calls[0].id == "call_2_0"


async def test_usage_is_plausible() -> None:
    request = ask("What is 17*23?")
    response = await LocalProvider().complete(request)

    assert response.usage.input_tokens > 10  # the tool schemas count
    assert response.usage.output_tokens >= 1
    assert response.usage.cached_tokens == 0


async def test_deltas_concatenate_to_the_content() -> None:
    deltas: list[str] = []

    async def collect(text: str) -> None:
        deltas.append(text)

    request = ask("tell me a story about a fox and a very lazy dog", tools=())
    response = await LocalProvider().complete(request, on_delta=collect)

    assert len(deltas) > 1
    assert "".join(deltas) == response.message.content


async def test_answers_are_deterministic() -> None:
    request = ask("What is 17*23?")
    assert await LocalProvider().complete(request) == await LocalProvider().complete(request)


def test_split_chunks_keeps_every_character() -> None:
    text = "  one two\nthree  four five six seven "
    assert "".join(split_chunks(text)) == text
