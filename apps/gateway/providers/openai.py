"""OpenAI Chat Completions (providers.md §1), and the base of every OpenAI-shaped provider.

Differences between OpenAI-shaped hosts are data (:class:`OpenAIQuirks`), never ``if provider ==``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from .adapter import BAD_REQUEST, ProviderAdapter, WireRequest, as_dict, as_int
from .base import (
    FINISH_CONTENT_FILTER,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_TOOL_CALLS,
    ChatRequest,
    ChatResult,
    ProviderError,
    StreamEvent,
    Usage,
    error_for_status,
    unsupported_parameter_error,
)
from .transport import PoolLimits, SseEvent, Timeouts

STREAM_DONE = "[DONE]"
# A mid-stream error carries no HTTP status; its type says how bad it is.
_STREAM_ERROR_STATUS = {
    "server_error": 500,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "overloaded_error": 503,
    "timeout": 504,
}
STREAM_ERROR_DEFAULT_STATUS = 502

FINISH_REASON_MAP: Mapping[str, str] = {
    "stop": FINISH_STOP,
    "length": FINISH_LENGTH,
    "content_filter": FINISH_CONTENT_FILTER,
    "tool_calls": FINISH_TOOL_CALLS,
    "function_call": FINISH_TOOL_CALLS,
    "error": FINISH_ERROR,
    "eos": FINISH_STOP,  # Together's older models
    "model_length": FINISH_LENGTH,  # Mistral
}


@dataclass(frozen=True, slots=True)
class OpenAIQuirks:
    """How one OpenAI-shaped host departs from OpenAI (providers.md §5)."""

    chat_path: str = "/chat/completions"
    # OpenAI's newer name; reasoning models accept only this one. Most other hosts: max_tokens.
    max_tokens_field: str = "max_completion_tokens"
    # Whether the host accepts stream_options.include_usage (some reject the unknown field and
    # report usage in the last chunk anyway).
    stream_usage_option: bool = True
    accepts_user: bool = True
    # Extra body fields the host rejects: refused up front with a clear 400.
    unsupported_params: frozenset[str] = frozenset()
    # Vendor object that carries usage in stream chunks (Groq: x_groq.usage).
    usage_vendor_field: str | None = None


def finish_reason_from(value: Any) -> str:
    if not isinstance(value, str):
        return FINISH_STOP
    return FINISH_REASON_MAP.get(value, FINISH_STOP)


def usage_from(raw: Mapping[str, Any]) -> Usage:
    """OpenAI-shaped usage, with the vendor variants for cached input (DeepSeek)."""
    prompt_details = as_dict(raw.get("prompt_tokens_details"))
    completion_details = as_dict(raw.get("completion_tokens_details"))
    cached = as_int(prompt_details.get("cached_tokens")) or as_int(
        raw.get("prompt_cache_hit_tokens")
    )
    return Usage(
        prompt_tokens=as_int(raw.get("prompt_tokens")),
        completion_tokens=as_int(raw.get("completion_tokens")),
        cached_tokens=cached,
        reasoning_tokens=as_int(completion_details.get("reasoning_tokens")),
    )


def error_parts(payload: Any) -> tuple[str, str, int | None]:
    """(message, code-or-type, status-in-body) from the many OpenAI-ish error bodies:
    ``{"error": {...}}``, ``{"error": "text"}``, ``{"message": ...}``, ``{"detail": ...}``."""
    body = as_dict(payload)
    error = body.get("error", body)
    if isinstance(error, str):
        return error, "", None
    error = as_dict(error)
    message = error.get("message") or body.get("detail") or ""
    if not isinstance(message, str):
        message = str(message)
    raw_code = error.get("code")
    body_status = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    code = str(raw_code) if isinstance(raw_code, str) else ""
    kind = error.get("type")
    hint = " ".join(part for part in (code, kind if isinstance(kind, str) else "") if part)
    return message, hint, body_status


class OpenAIAdapter(ProviderAdapter):
    """Chat Completions over ``{base_url}/chat/completions`` with a Bearer key."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
        quirks: OpenAIQuirks | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(provider=provider, base_url=base_url, timeouts=timeouts, limits=limits)
        self.quirks = quirks or OpenAIQuirks()
        self._url = self.base_url + self.quirks.chat_path
        self._static_headers = {"content-type": "application/json", **(headers or {})}

    # --- request --------------------------------------------------------------------------------
    def build_request(self, request: ChatRequest, *, api_key: str, stream: bool) -> WireRequest:
        quirks = self.quirks
        refused = quirks.unsupported_params.intersection(request.extra)
        if refused:
            param = sorted(refused)[0]
            raise unsupported_parameter_error(
                provider=self.provider,
                param=param,
                message=f"{self.provider} does not support the parameter '{param}'.",
            )
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.max_tokens is not None:
            body[quirks.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.user and quirks.accepts_user:
            body["user"] = request.user
        body.update(request.extra)
        if stream:
            body["stream"] = True
            if quirks.stream_usage_option:
                body["stream_options"] = {"include_usage": True}
        headers = {**self._static_headers, "authorization": f"Bearer {api_key}"}
        return WireRequest(url=self._url, headers=headers, body=body)

    # --- responses ------------------------------------------------------------------------------
    def parse_result(
        self, payload: dict[str, Any], *, request: ChatRequest, headers: Mapping[str, str]
    ) -> ChatResult:
        if "error" in payload:  # some hosts (OpenRouter) answer 200 with an error body
            raise self.error_from_payload(
                status=STREAM_ERROR_DEFAULT_STATUS, payload=payload, text="", retry_after=None
            )
        choice = as_dict(payload["choices"][0])
        message = as_dict(choice.get("message"))
        text = message.get("content") or message.get("refusal") or ""
        if not isinstance(text, str):
            raise TypeError("message.content is not a string")
        return ChatResult(
            text=text,
            finish_reason=finish_reason_from(choice.get("finish_reason")),
            usage=usage_from(as_dict(payload.get("usage"))),
            provider_request_id=payload.get("id") or headers.get("x-request-id"),
            upstream_model=payload.get("model") or request.upstream_model,
        )

    async def parse_stream(
        self, events: AsyncIterator[SseEvent], *, request: ChatRequest
    ) -> AsyncIterator[StreamEvent]:
        finish: str | None = None
        usage: Usage | None = None
        vendor_field = self.quirks.usage_vendor_field
        async for event in events:
            if event.data == STREAM_DONE:
                yield StreamEvent(finish_reason=finish or FINISH_STOP, usage=usage)
                return
            chunk = self.loads_event(event.data)
            if "error" in chunk:
                raise self.stream_error(chunk)
            raw_usage = chunk.get("usage")
            if isinstance(raw_usage, dict):
                usage = usage_from(raw_usage)
            elif vendor_field is not None:
                vendor_usage = as_dict(chunk.get(vendor_field)).get("usage")
                if isinstance(vendor_usage, dict):
                    usage = usage_from(vendor_usage)
            for choice in chunk.get("choices") or ():
                delta = as_dict(as_dict(choice).get("delta"))
                text = delta.get("content")
                if text and isinstance(text, str):
                    yield StreamEvent(text=text)
                reason = choice.get("finish_reason")
                if reason:
                    finish = finish_reason_from(reason)
        raise self.truncated_error()

    def stream_error(self, chunk: Mapping[str, Any]) -> ProviderError:
        """An error delivered inside a 200 stream (OpenAI: server_error; OpenRouter: with
        finish_reason "error" and the HTTP-like status in ``error.code``)."""
        message, hint, body_status = error_parts(chunk)
        status = body_status or next(
            (_STREAM_ERROR_STATUS[part] for part in hint.split() if part in _STREAM_ERROR_STATUS),
            STREAM_ERROR_DEFAULT_STATUS,
        )
        return error_for_status(
            provider=self.provider,
            upstream_status=status,
            message=message or "error in the stream",
            upstream_code=hint,
        )

    def error_from_payload(
        self, *, status: int, payload: Any, text: str, retry_after: float | None
    ) -> ProviderError:
        message, hint, body_status = error_parts(payload)
        if payload is None:
            message = text
        if status < BAD_REQUEST and body_status:  # error inside a 200
            status = body_status
        return error_for_status(
            provider=self.provider,
            upstream_status=status,
            message=message,
            upstream_code=hint,
            retry_after=retry_after,
        )
