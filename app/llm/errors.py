"""Typed provider failures. Every provider maps its wire errors onto these.

ProviderError
├── ProviderRateLimited   429; `retry_after_s` from Retry-After when given
├── ProviderTimeout       no answer within the call's timeout
├── ProviderUnavailable   connection refused/reset, DNS failure
├── ProviderServerError   5xx
├── ProviderBadRequest    4xx other than 401/403/429 (the request is wrong)
└── ProviderAuthError     401/403
"""

from __future__ import annotations


class ProviderError(Exception):
    """A model call failed. `retryable` tells whether trying again can help."""

    retryable: bool = False

    def __init__(self, message: str, *, provider: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code


class ProviderRateLimited(ProviderError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = 429,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status_code=status_code)
        self.retry_after_s = retry_after_s


class ProviderTimeout(ProviderError):
    retryable = True


class ProviderUnavailable(ProviderError):
    retryable = True


class ProviderServerError(ProviderError):
    retryable = True


class ProviderBadRequest(ProviderError):
    retryable = False


class ProviderAuthError(ProviderError):
    retryable = False
