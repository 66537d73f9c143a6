"""The prompt cache's key, its deterministic-only rule, the wrapper and the in-process store."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from app.agents.definition import AgentVersion
from app.bus.cache import InProcessResponseStore
from app.llm.cache import CachedModel, CacheScope, cache_scope, is_deterministic
from app.llm.types import LLMRequest, LLMResponse, Message, TokenUsage, ToolCall, ToolSpec
from tests.support.runner_fakes import ScriptedModel, text

SCOPE = CacheScope(ttl_s=60, agent="assistant", agent_version="1", namespace="user:alice")
SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"expression": {"type": "string"}, "precision": {"type": "integer"}},
}
BASE = LLMRequest(
    provider="openai",
    model="gpt-4o-mini",
    messages=(
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 17*23?"),
    ),
    tools=(ToolSpec(name="calculator", description="Arithmetic.", parameters=SCHEMA),),
    tool_choice="auto",
    temperature=0,
    max_output_tokens=256,
    seed=None,
)

# One change per field of LLMRequest; the test below fails when a field has none.
FIELD_CHANGES: dict[str, object] = {
    "provider": "anthropic",
    "model": "gpt-4o",
    "messages": (*BASE.messages[:1], Message(role="user", content="What is 17*24?")),
    "tools": (),
    "tool_choice": "required",
    "temperature": 0.5,
    "max_output_tokens": 257,
    "seed": 7,
}


def metric(result: str) -> float:
    return REGISTRY.get_sample_value("agentsvc_prompt_cache_total", {"result": result}) or 0.0


def test_every_request_field_has_a_change_under_test() -> None:
    assert set(FIELD_CHANGES) == set(LLMRequest.model_fields)


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_changing_any_request_field_changes_the_key(field: str) -> None:
    changed = BASE.model_copy(update={field: FIELD_CHANGES[field]})
    assert SCOPE.key(changed) != SCOPE.key(BASE)


@pytest.mark.parametrize(
    "request_",
    [
        BASE.model_copy(update={"messages": (*BASE.messages, Message(role="user", content="x"))}),
        BASE.model_copy(update={"messages": (Message(role="user", content="Be brief."),)}),
        BASE.model_copy(
            update={"messages": (*BASE.messages[:1], BASE.messages[1], BASE.messages[0])}
        ),
        BASE.model_copy(
            update={
                "messages": (
                    *BASE.messages,
                    Message(
                        role="assistant",
                        tool_calls=(ToolCall(id="c1", name="calculator", arguments={"a": 1}),),
                    ),
                )
            }
        ),
        BASE.model_copy(
            update={"tools": (ToolSpec(name="calculator", description="Math.", parameters=SCHEMA),)}
        ),
        BASE.model_copy(
            update={
                "tools": (ToolSpec(name="calculator", description="Arithmetic.", parameters={}),)
            }
        ),
        BASE.model_copy(update={"tool_choice": None}),
        BASE.model_copy(update={"max_output_tokens": None}),
    ],
)
def test_changes_inside_messages_and_tools_change_the_key(request_: LLMRequest) -> None:
    assert SCOPE.key(request_) != SCOPE.key(BASE)


@pytest.mark.parametrize(
    "scope",
    [
        CacheScope(ttl_s=60, agent="assistant", agent_version="2", namespace="user:alice"),
        CacheScope(ttl_s=60, agent="other", agent_version="1", namespace="user:alice"),
        CacheScope(ttl_s=60, agent="assistant", agent_version="1", namespace="user:bob"),
        CacheScope(ttl_s=60, agent="assistant", agent_version="1", namespace="agent:assistant"),
    ],
)
def test_agent_version_and_namespace_change_the_key(scope: CacheScope) -> None:
    assert scope.key(BASE) != SCOPE.key(BASE)


def test_key_is_stable_and_ignores_dict_order_and_ttl() -> None:
    reordered = {"properties": SCHEMA["properties"], "type": "object"}
    same = BASE.model_copy(
        update={
            "tools": (ToolSpec(name="calculator", description="Arithmetic.", parameters=reordered),)
        }
    )
    longer = CacheScope(ttl_s=999, agent="assistant", agent_version="1", namespace="user:alice")
    assert SCOPE.key(same) == SCOPE.key(BASE) == longer.key(BASE)
    assert len(SCOPE.key(BASE)) == 64


@pytest.mark.parametrize(
    ("temperature", "seed", "cached"),
    [
        (0, None, True),
        (0.0, None, True),
        (None, None, False),
        (0.2, None, False),
        (1.0, None, False),
        (0.7, 42, True),
        (None, 42, True),
    ],
)
def test_only_deterministic_calls_are_cacheable(
    temperature: float | None, seed: int | None, cached: bool
) -> None:
    request = BASE.model_copy(update={"temperature": temperature, "seed": seed})
    assert is_deterministic(request) is cached


def scope(namespace: str = "user:alice", ttl_s: float = 60) -> CacheScope:
    return CacheScope(ttl_s=ttl_s, agent="assistant", agent_version="1", namespace=namespace)


def version(**fields: object) -> AgentVersion:
    return AgentVersion(version="1", instructions="", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("version_", "default_ttl_s", "expected"),
    [
        (version(), 60, scope()),
        (version(cache_scope="agent"), 60, scope("agent:assistant")),
        (version(cache_ttl_s=5), 60, scope(ttl_s=5)),
        (version(cache_ttl_s=60), 0, scope()),
        (version(cache_ttl_s=0), 60, None),
        (version(), 0, None),
    ],
)
def test_scope_is_per_user_unless_the_version_shares_and_off_at_ttl_zero(
    version_: AgentVersion, default_ttl_s: float, expected: CacheScope | None
) -> None:
    chosen = cache_scope(version_, agent="assistant", user_id="alice", default_ttl_s=default_ttl_s)
    assert chosen == expected


async def test_second_identical_call_is_a_free_hit_streamed_to_on_delta() -> None:
    answer = text("The result is 391.", tokens=100)
    inner = ScriptedModel([answer])
    cached = CachedModel(inner, InProcessResponseStore(), scope=SCOPE)
    hits, misses = metric("hit"), metric("miss")

    first = await cached.complete(BASE)
    chunks: list[str] = []

    async def on_delta(chunk: str) -> None:
        chunks.append(chunk)

    second = await cached.complete(BASE, on_delta=on_delta)

    assert len(inner.requests) == 1
    assert first == answer
    assert second.cache_hit is True
    assert second.message == answer.message
    assert second.usage == TokenUsage()
    assert second.attempts == 0
    assert chunks == ["The result is 391."]
    assert (metric("hit") - hits, metric("miss") - misses) == (1, 1)


async def test_non_deterministic_calls_always_reach_the_model() -> None:
    inner = ScriptedModel([text("a"), text("b")])
    cached = CachedModel(inner, InProcessResponseStore(), scope=SCOPE)
    skips = metric("skip")
    request = BASE.model_copy(update={"temperature": None})
    answers = [await cached.complete(request), await cached.complete(request)]
    assert [a.message.content for a in answers] == ["a", "b"]
    assert not any(a.cache_hit for a in answers)
    assert metric("skip") - skips == 2


async def test_a_fallback_answer_is_not_stored() -> None:
    fallback = text("from the fallback").model_copy(update={"served_by": "openai/gpt-4o"})
    inner = ScriptedModel([fallback, text("from the model")])
    cached = CachedModel(inner, InProcessResponseStore(), scope=SCOPE)
    await cached.complete(BASE)
    again = await cached.complete(BASE)
    assert again.message.content == "from the model"
    assert not again.cache_hit


class BrokenStore:
    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("redis down")

    def put(self, key: str, value: bytes, *, ttl_s: float) -> asyncio.Future[object]:
        raise AssertionError("nothing is stored after a failed lookup")


async def test_a_failing_store_is_skipped() -> None:
    inner = ScriptedModel([text("a"), text("b")])
    cached = CachedModel(inner, BrokenStore(), scope=SCOPE)
    errors = metric("error")
    answers = [await cached.complete(BASE), await cached.complete(BASE)]
    assert [a.message.content for a in answers] == ["a", "b"]
    assert metric("error") - errors == 2


async def test_an_unreadable_entry_is_a_miss() -> None:
    store = InProcessResponseStore()
    await store.put(SCOPE.key(BASE), b"{not an answer", ttl_s=60)
    inner = ScriptedModel([text("fresh")])
    answer = await CachedModel(inner, store, scope=SCOPE).complete(BASE)
    assert answer.message.content == "fresh"
    assert LLMResponse.model_validate_json(await store.get(SCOPE.key(BASE)) or b"") == answer


async def test_in_process_store_expires_entries_and_bounds_its_size() -> None:
    now = [0.0]
    store = InProcessResponseStore(max_bytes=10, clock=lambda: now[0])
    await store.put("a", b"12345", ttl_s=5)
    now[0] = 4.9
    assert await store.get("a") == b"12345"
    now[0] = 5.0
    assert await store.get("a") is None

    await store.put("a", b"12345", ttl_s=60)
    await store.put("b", b"12345", ttl_s=60)
    assert await store.get("a") == b"12345"  # now the most recently used
    await store.put("c", b"123", ttl_s=60)
    assert await store.get("b") is None
    assert await store.get("a") == b"12345"
    assert await store.get("c") == b"123"
    await store.put("huge", b"x" * 11, ttl_s=60)
    assert await store.get("huge") is None
    assert await store.get("a") == b"12345"
