"""Anthropic Messages (providers.md §2): system split out, ``max_tokens`` required, named SSE
events, usage with cache reads, 529 overloaded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from .adapter import ProviderAdapter, WireRequest, as_dict, as_int
from .base import (
    FINISH_CONTENT_FILTER,
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

API_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
# Anthropic refuses a call without max_tokens; callers should pass the catalog default, this is
# only the floor for a caller that did not.
FALLBACK_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1 where OpenAI's is 0..2
SYSTEM_ROLES = frozenset({"system", "developer"})

STOP_REASON_MAP: Mapping[str, str] = {
    "end_turn": FINISH_STOP,
    "stop_sequence": FINISH_STOP,
    "pause_turn": FINISH_STOP,
    "max_tokens": FINISH_LENGTH,
    "model_context_window_exceeded": FINISH_LENGTH,
    "tool_use": FINISH_TOOL_CALLS,
    "refusal": FINISH_CONTENT_FILTER,
}
# In-stream errors have a type but no status; these are the statuses the types come with.
ERROR_TYPE_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
UNKNOWN_ERROR_STATUS = 502


def stop_reason_from(value: Any) -> str:
    return STOP_REASON_MAP.get(value, FINISH_STOP) if isinstance(value, str) else FINISH_STOP


def usage_from(raw: Mapping[str, Any], *, output_tokens: int | None = None) -> Usage:
    """Anthropic counts cache reads and writes *outside* ``input_tokens``; we fold them in so
    ``prompt_tokens`` is the whole prompt and ``cached_tokens`` the part read from cache. Cache
    writes are billed at the input price (the catalog has no cache-write price yet)."""
    cache_read = as_int(raw.get("cache_read_input_tokens"))
    cache_write = as_int(raw.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=as_int(raw.get("input_tokens")) + cache_read + cache_write,
        completion_tokens=(
            output_tokens if output_tokens is not None else as_int(raw.get("output_tokens"))
        ),
        cached_tokens=cache_read,
    )


class AnthropicAdapter(ProviderAdapter):
    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
    ) -> None:
        super().__init__(provider=provider, base_url=base_url, timeouts=timeouts, limits=limits)
        self._url = self.base_url + MESSAGES_PATH

    def build_request(self, request: ChatRequest, *, api_key: str, stream: bool) -> WireRequest:
        if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
            raise unsupported_parameter_error(
                provider=self.provider,
                param="temperature",
                message=f"{self.provider} accepts a temperature between 0 and 1.",
            )
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role in SYSTEM_ROLES:
                system.append(message.content)
                continue
            role = "assistant" if message.role == "assistant" else "user"
            if turns and turns[-1]["role"] == role:
                # Anthropic wants alternating roles; consecutive turns of one role are one turn.
                turns[-1]["content"] += "\n\n" + message.content
            else:
                turns.append({"role": role, "content": message.content})
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "max_tokens": request.max_tokens or FALLBACK_MAX_TOKENS,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.user:
            body["metadata"] = {"user_id": request.user}
        body.update(request.extra)
        if stream:
            body["stream"] = True
        headers = {
            "content-type": "application/json",
            "x-api-key": api_key,
            "anthropic-version": API_VERSION,
        }
        return WireRequest(url=self._url, headers=headers, body=body)

    def parse_result(
        self, payload: dict[str, Any], *, request: ChatRequest, headers: Mapping[str, str]
    ) -> ChatResult:
        if payload.get("type") == "error":
            raise self.stream_error(payload)
        blocks = payload["content"]
        text = "".join(
            block.get("text", "")
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "text"
        )
        return ChatResult(
            text=text,
            finish_reason=stop_reason_from(payload.get("stop_reason")),
            usage=usage_from(as_dict(payload.get("usage"))),
            provider_request_id=payload.get("id") or headers.get("request-id"),
            upstream_model=payload.get("model") or request.upstream_model,
        )

    async def parse_stream(
        self, events: AsyncIterator[SseEvent], *, request: ChatRequest
    ) -> AsyncIterator[StreamEvent]:
        start_usage: dict[str, Any] = {}
        output_tokens: int | None = None
        finish = FINISH_STOP
        async for event in events:
            kind = event.event
            if kind == "ping":
                continue
            payload = self.loads_event(event.data)
            kind = kind or payload.get("type", "")
            if kind == "content_block_delta":
                delta = as_dict(payload.get("delta"))
                if delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if text and isinstance(text, str):
                        yield StreamEvent(text=text)
            elif kind == "message_start":
                start_usage = as_dict(as_dict(payload.get("message")).get("usage"))
            elif kind == "message_delta":
                finish = stop_reason_from(as_dict(payload.get("delta")).get("stop_reason"))
                delta_usage = as_dict(payload.get("usage"))
                if "output_tokens" in delta_usage:  # cumulative: the last one is the total
                    output_tokens = as_int(delta_usage.get("output_tokens"))
            elif kind == "message_stop":
                usage = (
                    usage_from(start_usage, output_tokens=output_tokens)
                    if output_tokens is not None
                    else None
                )
                yield StreamEvent(finish_reason=finish, usage=usage)
                return
            elif kind == "error":
                raise self.stream_error(payload)
        raise self.truncated_error()

    def stream_error(self, payload: Mapping[str, Any]) -> ProviderError:
        error = as_dict(payload.get("error"))
        kind = error.get("type") if isinstance(error.get("type"), str) else ""
        return error_for_status(
            provider=self.provider,
            upstream_status=ERROR_TYPE_STATUS.get(str(kind), UNKNOWN_ERROR_STATUS),
            message=str(error.get("message") or "error in the stream"),
            upstream_code=str(kind),
        )

    def error_from_payload(
        self, *, status: int, payload: Any, text: str, retry_after: float | None
    ) -> ProviderError:
        error = as_dict(as_dict(payload).get("error"))
        message = error.get("message")
        kind = error.get("type")
        return error_for_status(
            provider=self.provider,
            upstream_status=status,
            message=message if isinstance(message, str) else text,
            upstream_code=kind if isinstance(kind, str) else "",
            retry_after=retry_after,
        )
