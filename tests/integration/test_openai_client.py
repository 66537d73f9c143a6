"""OpenAIProvider against a fake Chat Completions server on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from app.llm.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.llm.openai import OpenAIProvider
from app.llm.types import LLMRequest, Message, TokenUsage, ToolCall
from app.llm.wire import ModelHttp
from tests.fakes.llm_server import (
    ErrorReply,
    FakeLLMServer,
    HangReply,
    TextReply,
    ToolCallReply,
    Usage,
    serve_fake_openai,
)
from tests.support.llm_client import CALCULATOR, Deltas, request_for


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_openai() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[ModelHttp]:
    # The client the service itself uses (see app/lifespan.py).
    client = ModelHttp()
    yield client
    await client.aclose()


@pytest.fixture
def provider(fake: FakeLLMServer, http: ModelHttp) -> OpenAIProvider:
    return OpenAIProvider(http=http, base_url=fake.base_url, api_key="sk-test", timeout_s=5)


def ask(text: str = "hi", **options: object) -> LLMRequest:
    return request_for("openai", "gpt-4o-mini", text, **options)


async def test_text_answer(provider: OpenAIProvider, fake: FakeLLMServer) -> None:
    fake.enqueue(TextReply("Hello there.", usage=Usage(input_tokens=12, output_tokens=3)))

    response = await provider.complete(ask())

    assert response.message == Message(role="assistant", content="Hello there.")
    assert response.usage == TokenUsage(input_tokens=12, output_tokens=3)
    assert response.finish_reason == "stop"
    assert response.model == "gpt-4o-mini"
    body = fake.requests[0]
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "temperature" not in body
    assert "tools" not in body
    assert "stream" not in body
    assert fake.headers[0]["authorization"] == "Bearer sk-test"


async def test_request_carries_tools_and_sampling_options(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    fake.enqueue(ToolCallReply("calculator", {"expression": "17*23"}, call_id="call_9"))
    call = ToolCall(id="call_1", name="calculator", arguments={"expression": "2+2"})
    request = ask(
        "What is 17*23?",
        tools=[CALCULATOR],
        tool_choice="required",
        temperature=0.2,
        max_output_tokens=300,
        seed=7,
    ).model_copy(
        update={
            "messages": (
                Message(role="system", content="Be brief."),
                Message(role="user", content="What is 2+2?"),
                Message(role="assistant", tool_calls=(call,)),
                Message(role="tool", tool_call_id="call_1", name="calculator", content="4"),
            )
        }
    )

    response = await provider.complete(request)

    assert response.message.tool_calls == (
        ToolCall(id="call_9", name="calculator", arguments={"expression": "17*23"}),
    )
    assert response.finish_reason == "tool_calls"
    body = fake.requests[0]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluate arithmetic.",
                "parameters": CALCULATOR.parameters,
            },
        }
    ]
    assert body["tool_choice"] == "required"
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 300
    assert body["seed"] == 7
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression":"2+2"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]


async def test_streamed_text_arrives_in_deltas_with_usage(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    usage = Usage(input_tokens=2000, output_tokens=9, cached_tokens=1024)
    fake.enqueue(TextReply("The quick brown fox jumps.", usage=usage))
    deltas = Deltas()

    response = await provider.complete(ask(), on_delta=deltas)

    assert len(deltas.chunks) > 1
    assert "".join(deltas.chunks) == "The quick brown fox jumps."
    assert response.message.content == "The quick brown fox jumps."
    assert response.usage == TokenUsage(input_tokens=2000, output_tokens=9, cached_tokens=1024)
    assert response.finish_reason == "stop"
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_is_reassembled(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    arguments: dict[str, object] = {"expression": "(1+2)*3", "precision": 2}
    fake.enqueue(ToolCallReply("calculator", arguments, call_id="call_s"))
    deltas = Deltas()

    response = await provider.complete(ask(tools=[CALCULATOR]), on_delta=deltas)

    assert response.message.tool_calls == (
        ToolCall(id="call_s", name="calculator", arguments=arguments),
    )
    assert response.message.content is None
    assert response.finish_reason == "tool_calls"
    assert deltas.chunks == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("raw", ["[1, 2]", '{"expression": "1+'])
async def test_non_object_arguments_are_kept_raw(
    provider: OpenAIProvider, fake: FakeLLMServer, raw: str, stream: bool
) -> None:
    fake.enqueue(ToolCallReply("calculator", raw))

    response = await provider.complete(
        ask(tools=[CALCULATOR]), on_delta=Deltas() if stream else None
    )

    (call,) = response.message.tool_calls
    assert call.arguments == {}
    assert call.raw_arguments == raw


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),
        ({}, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_429_is_rate_limited_with_retry_after(
    provider: OpenAIProvider,
    fake: FakeLLMServer,
    headers: dict[str, str],
    expected: float | None,
    stream: bool,
) -> None:
    fake.enqueue(ErrorReply(429, "slow down", headers=headers))

    with pytest.raises(ProviderRateLimited) as caught:
        await provider.complete(ask(), on_delta=Deltas() if stream else None)

    assert caught.value.retry_after_s == expected
    assert caught.value.status_code == 429
    assert caught.value.provider == "openai"


async def test_retry_after_as_http_date(provider: OpenAIProvider, fake: FakeLLMServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake.enqueue(ErrorReply(429, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(ProviderRateLimited) as caught:
        await provider.complete(ask())

    assert caught.value.retry_after_s is not None
    assert 25 <= caught.value.retry_after_s <= 30


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ProviderServerError),
        (503, ProviderServerError),
        (400, ProviderBadRequest),
        (404, ProviderBadRequest),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors_are_typed(
    provider: OpenAIProvider,
    fake: FakeLLMServer,
    status: int,
    error: type[ProviderError],
    stream: bool,
) -> None:
    fake.enqueue(ErrorReply(status, "model 'nope' does not exist"))

    with pytest.raises(error, match="model 'nope' does not exist") as caught:
        await provider.complete(ask(), on_delta=Deltas() if stream else None)

    assert caught.value.status_code == status


async def test_malformed_json_is_a_server_error(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    fake.enqueue(ErrorReply(200, body="{not json"))

    with pytest.raises(ProviderServerError):
        await provider.complete(ask())


async def test_connection_refused_is_unavailable(http: ModelHttp) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(
        http=http, base_url=f"http://127.0.0.1:{port}/v1", api_key=None, timeout_s=5
    )

    with pytest.raises(ProviderUnavailable):
        await provider.complete(ask())


@pytest.mark.parametrize("stream", [False, True])
async def test_no_answer_within_the_timeout(
    fake: FakeLLMServer, http: ModelHttp, stream: bool
) -> None:
    provider = OpenAIProvider(http=http, base_url=fake.base_url, api_key=None, timeout_s=0.2)
    fake.enqueue(HangReply())

    with pytest.raises(ProviderTimeout):
        await provider.complete(ask(), on_delta=Deltas() if stream else None)


async def test_without_a_key_no_authorization_is_sent(fake: FakeLLMServer, http: ModelHttp) -> None:
    provider = OpenAIProvider(http=http, base_url=fake.base_url, api_key=None, timeout_s=5)

    response = await provider.complete(ask())

    assert response.message.content == "ok"
    assert "authorization" not in fake.headers[0]


async def test_a_stream_cut_short_is_a_server_error(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    chunk = '{"model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}'
    fake.enqueue(ErrorReply(200, body=f"data: {chunk}\n\n"))

    with pytest.raises(ProviderServerError, match="ended before"):
        await provider.complete(ask(), on_delta=Deltas())


BIG = b"x" * (9 * 2**20)
COMPLETION = b'{"choices": [{"message": {"role": "assistant", "content": "hi"}}]}'


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reply", "error", "fragment"),
    [
        # Bytes that are no gzip, sent as gzip: the transport's decoding error.
        (
            ErrorReply(200, body="garbage", headers={"content-encoding": "gzip"}),
            ProviderUnavailable,
            "unreachable",
        ),
        (ErrorReply(200, body=b'{"x": "' + BIG + b'"}'), ProviderServerError, "more than 8 MiB"),
        (
            ErrorReply(302, body=COMPLETION, headers={"location": "http://elsewhere/v1"}),
            ProviderBadRequest,
            "redirect",
        ),
    ],
)
async def test_broken_oversized_and_redirected_answers_are_typed_errors(
    provider: OpenAIProvider,
    fake: FakeLLMServer,
    reply: ErrorReply,
    error: type[ProviderError],
    fragment: str,
    stream: bool,
) -> None:
    fake.enqueue(reply)
    with pytest.raises(error, match=fragment):
        await provider.complete(ask(), on_delta=Deltas() if stream else None)


async def test_an_endless_streamed_line_is_not_read_into_memory(
    provider: OpenAIProvider, fake: FakeLLMServer
) -> None:
    fake.enqueue(
        ErrorReply(200, body=b"data: " + BIG, headers={"content-type": "text/event-stream"})
    )
    with pytest.raises(ProviderServerError, match="more than 8 MiB"):
        await provider.complete(ask(), on_delta=Deltas())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=2**31, output_tokens=5),
        Usage(input_tokens=-1000, output_tokens=5),
        Usage(input_tokens=10, output_tokens=-5),
        Usage(input_tokens=10, output_tokens=5, cached_tokens=10**8),
    ],
)
async def test_impossible_usage_is_a_malformed_answer(
    provider: OpenAIProvider, fake: FakeLLMServer, usage: Usage, stream: bool
) -> None:
    fake.enqueue(TextReply("hi", usage=usage))
    with pytest.raises(ProviderServerError, match="impossible token usage"):
        await provider.complete(ask(), on_delta=Deltas() if stream else None)
