"""AnthropicProvider against a fake Messages API server on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from app.llm.anthropic import AnthropicProvider
from app.llm.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.llm.types import LLMRequest, Message, TokenUsage, ToolCall
from app.llm.wire import ModelHttp
from tests.fakes.llm_server import (
    ErrorReply,
    FakeLLMServer,
    HangReply,
    TextReply,
    ToolCallReply,
    Usage,
    serve_fake_anthropic,
)
from tests.support.llm_client import CALCULATOR, Deltas, request_for


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_anthropic() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[ModelHttp]:
    # The client the service itself uses (see app/lifespan.py).
    client = ModelHttp()
    yield client
    await client.aclose()


@pytest.fixture
def provider(fake: FakeLLMServer, http: ModelHttp) -> AnthropicProvider:
    return AnthropicProvider(http=http, base_url=fake.base_url, api_key="sk-ant-test", timeout_s=5)


def ask(text: str = "hi", **options: object) -> LLMRequest:
    return request_for("anthropic", "claude-sonnet-4-20250514", text, **options)


async def test_text_answer(provider: AnthropicProvider, fake: FakeLLMServer) -> None:
    fake.enqueue(TextReply("Hello there.", usage=Usage(input_tokens=12, output_tokens=3)))
    request = ask().model_copy(
        update={
            "messages": (
                Message(role="system", content="Be brief."),
                Message(role="system", content="Be kind."),
                Message(role="user", content="hi"),
            )
        }
    )

    response = await provider.complete(request)

    assert response.message == Message(role="assistant", content="Hello there.")
    assert response.usage == TokenUsage(input_tokens=12, output_tokens=3)
    assert response.finish_reason == "end_turn"
    assert response.model == "claude-sonnet-4-20250514"
    body = fake.requests[0]
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 1024
    assert "temperature" not in body
    assert "tools" not in body
    assert fake.headers[0]["x-api-key"] == "sk-ant-test"
    assert fake.headers[0]["anthropic-version"] == "2023-06-01"


async def test_request_carries_tools_and_tool_turns(
    provider: AnthropicProvider, fake: FakeLLMServer
) -> None:
    fake.enqueue(ToolCallReply("calculator", {"expression": "17*23"}, call_id="toolu_9"))
    calls = (
        ToolCall(id="toolu_1", name="calculator", arguments={"expression": "2+2"}),
        ToolCall(id="toolu_2", name="calculator", arguments={"expression": "3+3"}),
    )
    request = ask(
        tools=[CALCULATOR], tool_choice="required", temperature=0.2, max_output_tokens=300
    ).model_copy(
        update={
            "messages": (
                Message(role="user", content="2+2 and 3+3?"),
                Message(role="assistant", content="Computing.", tool_calls=calls),
                Message(role="tool", tool_call_id="toolu_1", name="calculator", content="4"),
                Message(role="tool", tool_call_id="toolu_2", name="calculator", content="6"),
            )
        }
    )

    response = await provider.complete(request)

    assert response.message.tool_calls == (
        ToolCall(id="toolu_9", name="calculator", arguments={"expression": "17*23"}),
    )
    assert response.finish_reason == "tool_use"
    body = fake.requests[0]
    assert body["tools"] == [
        {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "input_schema": CALCULATOR.parameters,
        }
    ]
    assert body["tool_choice"] == {"type": "any"}
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 300
    assert "seed" not in body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "2+2 and 3+3?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Computing."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "calculator",
                    "input": {"expression": "2+2"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "calculator",
                    "input": {"expression": "3+3"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "6"},
            ],
        },
    ]


@pytest.mark.parametrize(("choice", "wire"), [("auto", "auto"), ("none", "none")])
async def test_tool_choice_mapping(
    provider: AnthropicProvider, fake: FakeLLMServer, choice: str, wire: str
) -> None:
    await provider.complete(ask(tools=[CALCULATOR], tool_choice=choice))
    assert fake.requests[0]["tool_choice"] == {"type": wire}


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_counts_cache_reads_and_writes(
    provider: AnthropicProvider, fake: FakeLLMServer, stream: bool
) -> None:
    usage = Usage(input_tokens=3000, output_tokens=9, cached_tokens=2048, cache_write_tokens=512)
    fake.enqueue(TextReply("The quick brown fox jumps.", usage=usage))
    deltas = Deltas()

    response = await provider.complete(ask(), on_delta=deltas if stream else None)

    assert response.usage == TokenUsage(
        input_tokens=3000, output_tokens=9, cached_tokens=2048, cache_write_tokens=512
    )
    assert response.message.content == "The quick brown fox jumps."
    if stream:
        assert len(deltas.chunks) > 1
        assert "".join(deltas.chunks) == "The quick brown fox jumps."
        assert fake.requests[0]["stream"] is True


async def test_streamed_tool_call_is_reassembled(
    provider: AnthropicProvider, fake: FakeLLMServer
) -> None:
    arguments: dict[str, object] = {"expression": "(1+2)*3", "precision": 2}
    fake.enqueue(ToolCallReply("calculator", arguments, call_id="toolu_s"))
    deltas = Deltas()

    response = await provider.complete(ask(tools=[CALCULATOR]), on_delta=deltas)

    assert response.message.tool_calls == (
        ToolCall(id="toolu_s", name="calculator", arguments=arguments),
    )
    assert response.message.content is None
    assert response.finish_reason == "tool_use"
    assert deltas.chunks == []


@pytest.mark.parametrize("raw", ["[1, 2]", '{"expression": "1+'])
async def test_streamed_non_object_arguments_are_kept_raw(
    provider: AnthropicProvider, fake: FakeLLMServer, raw: str
) -> None:
    fake.enqueue(ToolCallReply("calculator", raw))

    response = await provider.complete(ask(tools=[CALCULATOR]), on_delta=Deltas())

    (call,) = response.message.tool_calls
    assert call.arguments == {}
    assert call.raw_arguments == raw


@pytest.mark.parametrize("stream", [False, True])
async def test_429_is_rate_limited_with_retry_after(
    provider: AnthropicProvider, fake: FakeLLMServer, stream: bool
) -> None:
    fake.enqueue(ErrorReply(429, "rate limited", headers={"retry-after": "12"}))

    with pytest.raises(ProviderRateLimited) as caught:
        await provider.complete(ask(), on_delta=Deltas() if stream else None)

    assert caught.value.retry_after_s == 12.0
    assert caught.value.provider == "anthropic"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ProviderServerError),
        (529, ProviderServerError),
        (400, ProviderBadRequest),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors_are_typed(
    provider: AnthropicProvider,
    fake: FakeLLMServer,
    status: int,
    error: type[ProviderError],
    stream: bool,
) -> None:
    fake.enqueue(ErrorReply(status, "max_tokens: must be positive"))

    with pytest.raises(error, match="max_tokens: must be positive") as caught:
        await provider.complete(ask(), on_delta=Deltas() if stream else None)

    assert caught.value.status_code == status


async def test_connection_refused_is_unavailable(http: ModelHttp) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = AnthropicProvider(
        http=http, base_url=f"http://127.0.0.1:{port}", api_key="k", timeout_s=5
    )

    with pytest.raises(ProviderUnavailable):
        await provider.complete(ask())


@pytest.mark.parametrize("stream", [False, True])
async def test_no_answer_within_the_timeout(
    fake: FakeLLMServer, http: ModelHttp, stream: bool
) -> None:
    provider = AnthropicProvider(http=http, base_url=fake.base_url, api_key="k", timeout_s=0.2)
    fake.enqueue(HangReply())

    with pytest.raises(ProviderTimeout):
        await provider.complete(ask(), on_delta=Deltas() if stream else None)


async def test_an_error_event_mid_stream_is_a_server_error(
    provider: AnthropicProvider, fake: FakeLLMServer
) -> None:
    error = '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    fake.enqueue(ErrorReply(200, body=f"event: error\ndata: {error}\n\n"))

    with pytest.raises(ProviderServerError, match="Overloaded"):
        await provider.complete(ask(), on_delta=Deltas())


async def test_a_stream_cut_short_is_a_server_error(
    provider: AnthropicProvider, fake: FakeLLMServer
) -> None:
    start = '{"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 5}}}'
    fake.enqueue(ErrorReply(200, body=f"event: message_start\ndata: {start}\n\n"))

    with pytest.raises(ProviderServerError, match="ended before"):
        await provider.complete(ask(), on_delta=Deltas())
