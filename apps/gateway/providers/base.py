"""The one internal shape every adapter speaks, and the one error every adapter raises.

The gateway core never sees a provider's wire format: it builds a :class:`ChatRequest`, gets back
a :class:`ChatResult` or a stream of :class:`StreamEvent`, and catches :class:`ProviderError`, whose
``status`` is already the HTTP status *we* answer and whose ``retryable`` drives failover
(providers.md §6). Token counts are normalized to OpenAI's convention: ``prompt_tokens`` includes
cached input and ``completion_tokens`` includes reasoning.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from llmwise.errors import ApplicationError

# --- finish reasons ---------------------------------------------------------------------------
FINISH_STOP: Final = "stop"
FINISH_LENGTH: Final = "length"
FINISH_CONTENT_FILTER: Final = "content_filter"
FINISH_TOOL_CALLS: Final = "tool_calls"
FINISH_ERROR: Final = "error"
FINISH_REASONS: Final = frozenset(
    {FINISH_STOP, FINISH_LENGTH, FINISH_CONTENT_FILTER, FINISH_TOOL_CALLS, FINISH_ERROR}
)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system, developer, user, assistant
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call to one upstream model, already resolved through the catalog.

    ``max_tokens`` should always be set by the caller (the catalog's ``default_max_tokens`` when
    the client gave none): it caps what we reserved for, and Anthropic requires it. ``extra`` holds
    provider-specific body fields passed through verbatim (e.g. OpenRouter's ``provider``).
    """

    upstream_model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    stream: bool = False
    user: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # part of prompt_tokens served from the provider's prompt cache
    reasoning_tokens: int = 0  # part of completion_tokens spent thinking
    estimated: bool = False  # True when we counted, because the provider never said

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    finish_reason: str
    usage: Usage
    provider_request_id: str | None
    upstream_model: str


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of a stream: a text delta, or the final event.

    A stream yields events with ``text`` and then, only when the upstream ended it properly, one
    final event with ``finish_reason`` set and ``usage`` when the provider reported it (``None``
    means: estimate from the text). Anything else ends the stream with a :class:`ProviderError`.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


# --- errors -----------------------------------------------------------------------------------
# Our envelope's error types (llmwise.errors) for upstream trouble.
TYPE_INVALID_REQUEST: Final = "invalid_request_error"
TYPE_AUTHENTICATION: Final = "authentication_error"
TYPE_PERMISSION: Final = "permission_error"
TYPE_NOT_FOUND: Final = "not_found_error"
TYPE_RATE_LIMIT: Final = "rate_limit_error"
TYPE_BILLING: Final = "billing_error"
TYPE_UPSTREAM: Final = "upstream_error"
TYPE_TIMEOUT: Final = "timeout_error"

# Codes the caller branches on.
CODE_UNREACHABLE: Final = "upstream_unreachable"
CODE_TIMEOUT: Final = "upstream_timeout"
CODE_INVALID_RESPONSE: Final = "upstream_invalid_response"
CODE_STREAM_INTERRUPTED: Final = "upstream_stream_interrupted"
CODE_SERVER_ERROR: Final = "upstream_server_error"
CODE_OVERLOADED: Final = "upstream_overloaded"
CODE_RATE_LIMITED: Final = "upstream_rate_limited"
CODE_AUTH_FAILED: Final = "upstream_auth_failed"  # the key we sent was refused (401/403)
CODE_QUOTA_EXHAUSTED: Final = "upstream_quota_exhausted"  # billing, not transient
CODE_CONTEXT_LENGTH: Final = "context_length_exceeded"
CODE_CONTENT_POLICY: Final = "content_policy_violation"
CODE_INVALID_REQUEST: Final = "upstream_invalid_request"
CODE_MODEL_NOT_FOUND: Final = "model_not_found"
CODE_TOO_LARGE: Final = "request_too_large"
CODE_UNSUPPORTED_PARAMETER: Final = "unsupported_parameter"

RETRY_AFTER_MAX_SECONDS: Final = 3600.0  # beyond an hour a hint is noise, not a plan


class ProviderError(ApplicationError):
    """An upstream call failed; everything the caller needs to answer, retry or fail over.

    ``status`` is what we answer our client (never the provider's status passed through);
    ``upstream_status`` is what the provider said (``None`` when it said nothing: connect error,
    timeout). A refused key answers 502 with code ``upstream_auth_failed`` because a platform key
    is our fault; a caller that sent the user's own key (BYOK) calls :meth:`as_byok`.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int,
        error_type: str,
        code: str,
        retryable: bool,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.provider = provider
        self.status = status
        self.status_code = status  # what llmwise.errors.api_exception_handler reads
        self.error_type = error_type
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.message!r}, provider={self.provider!r}, status={self.status}, "
            f"code={self.code!r}, retryable={self.retryable}, retry_after={self.retry_after}, "
            f"upstream_status={self.upstream_status})"
        )

    def _copy(self, **changes: Any) -> ProviderError:
        values: dict[str, Any] = {
            "message": self.message,
            "provider": self.provider,
            "status": self.status,
            "error_type": self.error_type,
            "code": self.code,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "upstream_status": self.upstream_status,
            "param": self.param,
        }
        values.update(changes)
        message = values.pop("message")
        return ProviderError(message, **values)

    def as_byok(self) -> ProviderError:
        """The same failure when the key was the caller's own: a refused key or an exhausted
        quota is theirs to fix, so it answers 401/402/403 naming the provider; anything else is
        unchanged."""
        if self.code == CODE_AUTH_FAILED:
            forbidden = self.upstream_status == 403
            return self._copy(
                message=f"Your {self.provider} key was refused by {self.provider} (BYOK): "
                f"{self.message}",
                status=403 if forbidden else 401,
                error_type=TYPE_PERMISSION if forbidden else TYPE_AUTHENTICATION,
                code="byok_key_forbidden" if forbidden else "byok_key_invalid",
            )
        if self.code == CODE_QUOTA_EXHAUSTED:
            return self._copy(
                message=f"Your {self.provider} account is out of quota (BYOK): {self.message}",
                status=402,
                error_type=TYPE_BILLING,
                code="byok_quota_exhausted",
            )
        return self

    def after_output(self) -> ProviderError:
        """The same failure once text has reached the caller: never retried or failed over,
        because a second answer cannot be spliced onto the first (providers.md §6)."""
        return self._copy(retryable=False) if self.retryable else self


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


_CONTEXT_LENGTH_MARKERS: Final = (
    "context_length",
    "context length",
    "too many tokens",
    "too long",
    "exceeds the maximum number of tokens",  # Gemini
)
_CONTENT_POLICY_MARKERS: Final = (
    "content_policy",
    "content policy",
    "content filtering",  # Anthropic
    "moderation",  # OpenRouter's 403
    "safety",
)
# Out of money upstream, whatever status says it (Anthropic: 400 "credit balance is too low").
_QUOTA_MARKERS: Final = ("insufficient_quota", "credit balance", "insufficient credits")


def _mentions(text: str, markers: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in markers)


def error_for_status(
    *,
    provider: str,
    upstream_status: int,
    message: str,
    upstream_code: str = "",
    retry_after: float | None = None,
) -> ProviderError:
    """Translate a provider's HTTP error into ours (providers.md §6).

    ``upstream_code`` is the provider's own code or type string, used to tell apart what one
    status means several things for (429 rate limit vs. quota; 400 context vs. policy).
    """
    message = message or f"{provider} answered HTTP {upstream_status}."
    hint = f"{upstream_code} {message}"

    def make(
        status: int, error_type: str, code: str, retryable: bool, *, wait: float | None = None
    ) -> ProviderError:
        return ProviderError(
            message,
            provider=provider,
            status=status,
            error_type=error_type,
            code=code,
            retryable=retryable,
            retry_after=wait,
            upstream_status=upstream_status,
        )

    if upstream_status == 429:
        if _mentions(upstream_code, _QUOTA_MARKERS):
            return make(502, TYPE_UPSTREAM, CODE_QUOTA_EXHAUSTED, False)
        return make(429, TYPE_RATE_LIMIT, CODE_RATE_LIMITED, True, wait=retry_after)
    if upstream_status in (401, 403):
        if upstream_status == 403 and _mentions(hint, _CONTENT_POLICY_MARKERS):
            return make(400, TYPE_INVALID_REQUEST, CODE_CONTENT_POLICY, False)
        return make(502, TYPE_UPSTREAM, CODE_AUTH_FAILED, False)
    if upstream_status == 402:
        return make(502, TYPE_UPSTREAM, CODE_QUOTA_EXHAUSTED, False)
    if upstream_status == 404:
        return make(404, TYPE_NOT_FOUND, CODE_MODEL_NOT_FOUND, False)
    if upstream_status == 408:
        return make(504, TYPE_TIMEOUT, CODE_TIMEOUT, True, wait=retry_after)
    if upstream_status == 413:
        return make(413, TYPE_INVALID_REQUEST, CODE_TOO_LARGE, False)
    if upstream_status in (503, 529):
        return make(503, TYPE_UPSTREAM, CODE_OVERLOADED, True, wait=retry_after)
    if upstream_status == 504:
        return make(504, TYPE_TIMEOUT, CODE_TIMEOUT, True, wait=retry_after)
    if upstream_status >= 500:
        return make(502, TYPE_UPSTREAM, CODE_SERVER_ERROR, True, wait=retry_after)
    # What is left is a 4xx about the request itself: the caller's to fix, never retried.
    if _mentions(hint, _QUOTA_MARKERS):
        return make(502, TYPE_UPSTREAM, CODE_QUOTA_EXHAUSTED, False)
    if _mentions(hint, _CONTEXT_LENGTH_MARKERS):
        return make(400, TYPE_INVALID_REQUEST, CODE_CONTEXT_LENGTH, False)
    if _mentions(hint, _CONTENT_POLICY_MARKERS):
        return make(400, TYPE_INVALID_REQUEST, CODE_CONTENT_POLICY, False)
    return make(400, TYPE_INVALID_REQUEST, CODE_INVALID_REQUEST, False)


def transport_error(*, provider: str, message: str, timed_out: bool) -> ProviderError:
    """No HTTP answer at all: connect failure (502) or a timeout (504); both worth a retry."""
    return ProviderError(
        message,
        provider=provider,
        status=504 if timed_out else 502,
        error_type=TYPE_TIMEOUT if timed_out else TYPE_UPSTREAM,
        code=CODE_TIMEOUT if timed_out else CODE_UNREACHABLE,
        retryable=True,
    )


def invalid_response_error(*, provider: str, message: str) -> ProviderError:
    """The provider answered, but not in its own format (bad JSON, a stream cut short)."""
    return ProviderError(
        f"{provider} sent an invalid response: {message}",
        provider=provider,
        status=502,
        error_type=TYPE_UPSTREAM,
        code=CODE_INVALID_RESPONSE,
        retryable=True,
    )


def unsupported_parameter_error(*, provider: str, param: str, message: str) -> ProviderError:
    """A request we refuse before sending, because this provider cannot honour it."""
    return ProviderError(
        message,
        provider=provider,
        status=400,
        error_type=TYPE_INVALID_REQUEST,
        code=CODE_UNSUPPORTED_PARAMETER,
        retryable=False,
        param=param,
    )
