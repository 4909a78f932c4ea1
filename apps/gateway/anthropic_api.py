"""Anthropic-compatible endpoint: ``POST /v1/messages``.

The official ``anthropic`` SDKs work unchanged with ``base_url=<LLMWise>`` and an LLMWise API key
(sent as ``x-api-key``, or ``Authorization: Bearer``). The request is translated onto the same
call service as every other format, so any catalog model answers here, whatever its provider;
the answer, the stream and the errors come back in Anthropic's own shapes (status codes and error
types included) so the SDK raises its usual exception classes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final, cast

import orjson
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from llmwise.errors import ENVELOPE_ERRORS, ApplicationError, as_application_error

from . import calls
from .native_api import limit_headers
from .openai_api import (
    MAX_STOP_SEQUENCES,
    MethodNotAllowed,
    authenticate,
    json_body,
    json_response,
    llmwise_body,
    outcome_headers,
)
from .pricing import prompt_tokens_estimate
from .providers.base import (
    CODE_OVERLOADED,
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_TOOL_CALLS,
    ChatMessage,
    StreamEvent,
    Usage,
)

ENDPOINT: Final = "anthropic.messages"
ROLES: Final = ("user", "assistant")
# Accepted and used; anything else Anthropic's API knows (tools, thinking, top_k, ...) is refused
# by name rather than silently dropped, because dropping it would change the answer.
FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "metadata",
        "cache_control",  # a prompt-caching hint: ignoring it changes the price, not the answer
    }
)
STOP_REASONS: Final = {
    FINISH_LENGTH: "max_tokens",
    FINISH_TOOL_CALLS: "tool_use",
    FINISH_CONTENT_FILTER: "refusal",
}
# Anthropic's error type for each status we answer; the SDK picks its exception class by status.
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_OVERLOADED_STATUS: Final = 529


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApplicationError:
    return ApplicationError(message, code=code, param=param)


def _text_blocks(content: Any, param: str) -> str:
    """A string, or a list of ``{"type": "text", "text": ...}`` blocks (other keys such as
    ``cache_control`` are hints we may ignore), as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of text blocks.", param)
    parts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise _bad(
                f"Only text blocks are supported here (got {kind!r}).",
                f"{param}.{index}",
                "unsupported_content",
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad("A text block needs a 'text' string.", f"{param}.{index}.text")
        parts.append(text)
    return "".join(parts)


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _bad(f"{name} must be a number from 0 to 1.", name)
    return float(value)


def parse_anthropic_messages(body: dict[str, Any]) -> calls.ChatInput:
    """Validate an Anthropic Messages body into a :class:`calls.ChatInput`."""
    for name in body:
        if name not in FIELDS:
            raise _bad(
                f"{name!r} is not supported by LLMWise's Anthropic-compatible endpoint.",
                name,
                "unsupported_parameter",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model: a model id is required, e.g. 'claude-haiku-4.5'.", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: a positive integer is required.", "max_tokens")
    messages: list[ChatMessage] = []
    system = body.get("system")
    if system is not None:
        system_text = _text_blocks(system, "system")
        if system_text:
            messages.append(ChatMessage(role="system", content=system_text))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages: a non-empty list is required.", "messages")
    for index, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            raise _bad("Each message must be an object.", f"messages.{index}")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(
                "role must be 'user' or 'assistant' (the system prompt is the top-level "
                "'system' field).",
                f"messages.{index}.role",
            )
        content = _text_blocks(message.get("content"), f"messages.{index}.content")
        messages.append(ChatMessage(role=role, content=content))
    stop = body.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise _bad(
            f"stop_sequences must be a list of up to {MAX_STOP_SEQUENCES} non-empty strings.",
            "stop_sequences",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false.", "stream")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata must be an object.", "metadata")
    user = metadata.get("user_id") if metadata else None
    if user is not None and not isinstance(user, str):
        raise _bad("metadata.user_id must be a string.", "metadata.user_id")
    return calls.ChatInput(
        model=model.strip(),
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        stop=tuple(stop) if stop else None,
        stream=stream,
        user=user,
    )


def stop_reason(finish_reason: str) -> str:
    """Anthropic's stop_reason for our finish reason.

    The core does not say *which* stop sequence ended a call, so a stop is ``end_turn`` and
    ``stop_sequence`` stays null.
    """
    return STOP_REASONS.get(finish_reason, "end_turn")


def _usage(usage: Usage) -> dict[str, Any]:
    # Anthropic counts cache reads apart from input_tokens; ours includes them.
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def message_body(outcome: calls.ChatOutcome) -> dict[str, Any]:
    return {
        "id": f"msg_{outcome.request_id}",
        "type": "message",
        "role": "assistant",
        "model": outcome.model.id,
        "content": [{"type": "text", "text": outcome.result.text}],
        "stop_reason": stop_reason(outcome.result.finish_reason),
        "stop_sequence": None,
        "usage": _usage(outcome.result.usage),
        "llmwise": llmwise_body(outcome),
    }


def anthropic_status(exc: ApplicationError) -> int:
    """The status Anthropic itself would answer: an overloaded upstream is its 529."""
    if exc.code == CODE_OVERLOADED:
        return ANTHROPIC_OVERLOADED_STATUS
    return exc.status_code


def anthropic_error_body(exc: ApplicationError, *, request_id: str) -> dict[str, Any]:
    """Anthropic's error shape; our code, param and provider ride along for the curious."""
    status = anthropic_status(exc)
    return {
        "type": "error",
        "error": {
            "type": ERROR_TYPES.get(status, "api_error"),
            "message": exc.message,
            "code": exc.code,
            "param": exc.param,
            "provider": getattr(exc, "provider", None),
        },
        "request_id": request_id,
    }


def anthropic_error_response(exc: ApplicationError, *, request_id: str) -> JsonResponse:
    response = JsonResponse(
        anthropic_error_body(exc, request_id=request_id), status=anthropic_status(exc)
    )
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(max(int(retry_after + 0.999), 1))
    response["request-id"] = request_id  # where Anthropic's SDK looks for it
    for name, value in limit_headers(exc).items():
        response[name] = value
    return response


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _sse(
    stream: calls.ChatStream, first: StreamEvent | None, chat: calls.ChatInput
) -> AsyncIterator[bytes]:
    """Anthropic's event sequence for one text block: message_start, content_block_start, ping,
    content_block_delta…, content_block_stop, message_delta (stop_reason, usage), message_stop.
    A failure after the start ends the stream with one ``error`` event (the SDK raises it)."""
    events = cast(AsyncGenerator[StreamEvent, None], stream.events)
    # message_start must go out before the upstream reports usage: an estimate, corrected by the
    # cumulative totals in message_delta (the SDK overwrites it).
    estimate = prompt_tokens_estimate(messages=chat.messages)
    # The three opening events go out in one write with the first delta (and the three closing
    # ones together): the same events, fewer packets before the first token.
    pending = _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{stream.request_id}",
                "type": "message",
                "role": "assistant",
                "model": stream.model.id,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": estimate, "output_tokens": 0},
            },
        },
    )
    pending += _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    pending += _event("ping", {"type": "ping"})
    finish_reason = "stop"
    try:
        event = first
        while event is not None:
            if event.text:
                yield pending + _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": event.text},
                    },
                )
                pending = b""
            if event.finish_reason is not None:
                finish_reason = event.finish_reason
            event = await anext(events, None)
    except ENVELOPE_ERRORS as caught:
        # The database failing as the call settles is an error of ours, in the same envelope.
        exc = as_application_error(caught)
        yield pending + _event("error", anthropic_error_body(exc, request_id=stream.request_id))
        return
    finally:
        # Settles right away if the client went away mid-stream.
        await events.aclose()
    usage: Usage = stream.outcome.get("usage") or Usage(estimate, 0, estimated=True)
    pending += _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    pending += _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish_reason), "stop_sequence": None},
            "usage": _usage(usage),
        },
    )
    yield pending + _event("message_stop", {"type": "message_stop"})


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponseBase:
    request_id: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "POST":
            raise MethodNotAllowed("Use POST.")
        api_key = await authenticate(request)
        chat = parse_anthropic_messages(json_body(request))
        if chat.stream:
            stream = await calls.chat_stream(
                api_key=api_key, chat=chat, request_id=request_id, endpoint=ENDPOINT
            )
            # Pull the first event before answering, so a failure before any text is a plain
            # JSON error with its status (and the SDK's typed exception), not a broken stream.
            first = await anext(stream.events, None)
            return StreamingHttpResponse(
                _sse(stream, first, chat),
                content_type="text/event-stream",
                headers={
                    "Cache-Control": "no-cache",
                    "request-id": request_id,
                    "x-llmwise-model": stream.model.id,
                    **limit_headers(stream),
                },
            )
        outcome = await calls.chat_call(
            api_key=api_key, chat=chat, request_id=request_id, endpoint=ENDPOINT
        )
    except ApplicationError as exc:
        return anthropic_error_response(exc, request_id=request_id)
    return json_response(
        message_body(outcome), headers={**outcome_headers(outcome), "request-id": request_id}
    )
