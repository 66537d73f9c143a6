"""The model clients of this process, addressed by `provider/model` references."""

from __future__ import annotations

from collections.abc import Mapping

from app.llm.anthropic import AnthropicProvider
from app.llm.local import LocalProvider
from app.llm.openai import OpenAIProvider
from app.llm.types import ModelClient
from app.llm.wire import ModelHttp
from app.observability.timing import FirstTokenTimer


class UnknownModel(ValueError):
    """A model reference names no configured provider or is not `provider/model`."""


class Providers:
    """Model clients by provider name, built once in the lifespan."""

    def __init__(self, clients: Mapping[str, ModelClient]) -> None:
        self._clients = dict(clients)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured provider names, sorted."""
        return tuple(sorted(self._clients))

    def resolve(self, model_ref: str) -> tuple[ModelClient, str]:
        """The client and model name of `"provider/model"` (the model may hold slashes)."""
        provider, slash, model = model_ref.partition("/")
        if not slash or not provider or not model:
            raise UnknownModel(
                f"model {model_ref!r} is not of the form 'provider/model'"
                f" (providers: {', '.join(self.names)})"
            )
        client = self._clients.get(provider)
        if client is None:
            raise UnknownModel(
                f"model {model_ref!r} names unknown provider {provider!r}"
                f" (configured: {', '.join(self.names)})"
            )
        return client, model


def build_providers(
    *,
    http: ModelHttp,
    openai_base_url: str,
    openai_api_key: str | None,
    anthropic_base_url: str,
    anthropic_api_key: str | None,
    timeout_s: float,
) -> Providers:
    """`local` and `openai` always (a keyless OpenAI-compatible server is fine);
    `anthropic` only when its key is set."""
    clients: dict[str, ModelClient] = {
        "local": LocalProvider(),
        "openai": OpenAIProvider(
            http=http, base_url=openai_base_url, api_key=openai_api_key, timeout_s=timeout_s
        ),
    }
    if anthropic_api_key:
        clients["anthropic"] = AnthropicProvider(
            http=http,
            base_url=anthropic_base_url,
            api_key=anthropic_api_key,
            timeout_s=timeout_s,
        )
    # Time to first token is measured here, around each provider call.
    return Providers({name: FirstTokenTimer(client) for name, client in clients.items()})
