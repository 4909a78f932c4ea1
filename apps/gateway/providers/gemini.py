"""Google Gemini generateContent (providers.md §3): roles user/model, systemInstruction,
usageMetadata with thoughts and cached tokens, google.rpc error statuses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from .adapter import BAD_REQUEST, ProviderAdapter, WireRequest, as_dict, as_int
from .base import (
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatRequest,
    ChatResult,
    ProviderError,
    StreamEvent,
    Usage,
    error_for_status,
    parse_retry_after,
)
from .transport import PoolLimits, SseEvent, Timeouts

API_PATH = "/v1beta/models/"
SYSTEM_ROLES = frozenset({"system", "developer"})
FINISH_REASON_MAP: Mapping[str, str] = {
    "STOP": FINISH_STOP,
    "MAX_TOKENS": FINISH_LENGTH,
    "SAFETY": FINISH_CONTENT_FILTER,
    "RECITATION": FINISH_CONTENT_FILTER,
    "BLOCKLIST": FINISH_CONTENT_FILTER,
    "PROHIBITED_CONTENT": FINISH_CONTENT_FILTER,
    "SPII": FINISH_CONTENT_FILTER,
    "IMAGE_SAFETY": FINISH_CONTENT_FILTER,
}
# google.rpc status names → the HTTP status they travel with (used when the body says more
# precisely than the status line, and for errors inside a stream).
STATUS_HTTP: Mapping[str, int] = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
UNKNOWN_ERROR_STATUS = 502
INVALID_KEY_REASON = "API_KEY_INVALID"  # Gemini refuses a wrong key with a 400 carrying this
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def finish_reason_from(value: Any) -> str:
    return FINISH_REASON_MAP.get(value, FINISH_STOP) if isinstance(value, str) else FINISH_STOP


def usage_from(raw: Mapping[str, Any]) -> Usage:
    """``candidatesTokenCount`` excludes thinking; thoughts are billed as output, so
    ``completion_tokens`` = candidates + thoughts. ``promptTokenCount`` includes cached."""
    thoughts = as_int(raw.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=as_int(raw.get("promptTokenCount")),
        completion_tokens=as_int(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=as_int(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _candidate_text(candidate: Mapping[str, Any]) -> str:
    parts = as_dict(candidate.get("content")).get("parts") or ()
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )


class GeminiAdapter(ProviderAdapter):
    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
    ) -> None:
        super().__init__(provider=provider, base_url=base_url, timeouts=timeouts, limits=limits)
        self._models_url = self.base_url + API_PATH

    def build_request(self, request: ChatRequest, *, api_key: str, stream: bool) -> WireRequest:
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role in SYSTEM_ROLES:
                system.append(message.content)
                continue
            role = "model" if message.role == "assistant" else "user"
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].append({"text": message.content})
            else:
                contents.append({"role": role, "parts": [{"text": message.content}]})
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if config:
            body["generationConfig"] = config
        body.update(request.extra)
        model = quote(request.upstream_model.removeprefix("models/"), safe="-._")
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        headers = {"content-type": "application/json", "x-goog-api-key": api_key}
        return WireRequest(url=self._models_url + model + method, headers=headers, body=body)

    def parse_result(
        self, payload: dict[str, Any], *, request: ChatRequest, headers: Mapping[str, str]
    ) -> ChatResult:
        if "error" in payload:
            raise self.error_from_payload(
                status=UNKNOWN_ERROR_STATUS, payload=payload, text="", retry_after=None
            )
        candidates = payload.get("candidates") or []
        if not candidates:
            # A blocked prompt: no candidates, a promptFeedback.blockReason instead.
            if "promptFeedback" not in payload:
                raise ValueError("no candidates and no promptFeedback")
            text, finish = "", FINISH_CONTENT_FILTER
        else:
            candidate = as_dict(candidates[0])
            text = _candidate_text(candidate)
            finish = finish_reason_from(candidate.get("finishReason"))
        return ChatResult(
            text=text,
            finish_reason=finish,
            usage=usage_from(as_dict(payload.get("usageMetadata"))),
            provider_request_id=payload.get("responseId"),
            upstream_model=payload.get("modelVersion") or request.upstream_model,
        )

    async def parse_stream(
        self, events: AsyncIterator[SseEvent], *, request: ChatRequest
    ) -> AsyncIterator[StreamEvent]:
        # No terminal marker: the stream is complete when a chunk carried a finishReason (or a
        # blocked prompt's feedback) and the body then ended cleanly.
        finish: str | None = None
        usage: Usage | None = None
        async for event in events:
            chunk = self.loads_event(event.data)
            if "error" in chunk:
                raise self.error_from_payload(
                    status=UNKNOWN_ERROR_STATUS, payload=chunk, text="", retry_after=None
                )
            metadata = as_dict(chunk.get("usageMetadata"))
            if "candidatesTokenCount" in metadata or "thoughtsTokenCount" in metadata:
                usage = usage_from(metadata)  # the totals arrive with the last chunk
            candidates = chunk.get("candidates") or []
            if not candidates and as_dict(chunk.get("promptFeedback")).get("blockReason"):
                finish = FINISH_CONTENT_FILTER
            for candidate in candidates:
                candidate = as_dict(candidate)
                text = _candidate_text(candidate)
                if text:
                    yield StreamEvent(text=text)
                if candidate.get("finishReason"):
                    finish = finish_reason_from(candidate["finishReason"])
        if finish is None:
            raise self.truncated_error()
        yield StreamEvent(finish_reason=finish, usage=usage)

    def error_from_payload(
        self, *, status: int, payload: Any, text: str, retry_after: float | None
    ) -> ProviderError:
        error = as_dict(as_dict(payload).get("error"))
        rpc_status = error.get("status") if isinstance(error.get("status"), str) else ""
        message = error.get("message") if isinstance(error.get("message"), str) else text
        details = [as_dict(d) for d in error.get("details") or () if isinstance(d, dict)]
        if any(d.get("reason") == INVALID_KEY_REASON for d in details):
            status = 401  # a wrong key, whatever the status line says
        elif status >= UNKNOWN_ERROR_STATUS or status < BAD_REQUEST:
            # In-stream or mislabelled: the rpc status is the better witness.
            status = STATUS_HTTP.get(str(rpc_status), status)
        if retry_after is None:
            retry_after = _retry_delay(details)
        return error_for_status(
            provider=self.provider,
            upstream_status=status,
            message=str(message),
            upstream_code=str(rpc_status),
            retry_after=retry_after,
        )


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """Gemini says when to retry in a google.rpc.RetryInfo detail ("7s"), not a header."""
    for detail in details:
        if detail.get("@type") == RETRY_INFO_TYPE:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return parse_retry_after(match.group(1))
    return None
