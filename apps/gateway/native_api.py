"""LLMWise's native chat endpoint: ``POST /api/v1/chat`` (JSON or SSE).

Same call service as the OpenAI-compatible endpoint; what differs is the shape: the answer comes
with the model used, usage, cost in credits, latency and the route taken, and a stream speaks one
small event vocabulary (``delta``, then ``done`` or ``error``) documented in ``docs/api.md``.
The WebSocket consumer (``consumers.py``) reuses the parser and the payload builders here, so the
two transports answer with the same objects.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from typing import Any, Final, cast

import orjson
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from apps.wallet.models import MICROS_PER_USD
from llmwise.errors import (
    ENVELOPE_ERRORS,
    ApplicationError,
    application_error_response,
    as_application_error,
    error_body,
)

from . import calls
from .models import CatalogModel
from .openai_api import (
    MethodNotAllowed,
    authenticate,
    json_body,
    json_response,
    outcome_headers,
    parse_openai_chat,
)
from .providers.base import StreamEvent, Usage

ENDPOINT: Final = "native.chat"
ROLES: Final = ("system", "user", "assistant")
FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "user",
        "fallbacks",  # failover chain (docs/routing.md)
        "mesh",
        "policy",  # a routing policy by name
    }
)
MESSAGE_FIELDS: Final = frozenset({"role", "content"})


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApplicationError:
    return ApplicationError(message, code=code, param=param)


def parse_native_chat(body: dict[str, Any]) -> calls.ChatInput:
    """Validate a native chat body into a :class:`calls.ChatInput`.

    Stricter than the OpenAI parser it builds on: unknown fields are refused (a typo such as
    ``max_token`` must not silently fall back to a default and cost more than meant), roles are
    system/user/assistant only and content is a plain string.
    """
    for name in body:
        if name not in FIELDS:
            raise _bad(
                f"Unknown field {name!r}. Allowed: {', '.join(sorted(FIELDS))}.",
                name,
                "unknown_parameter",
            )
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue  # the shared parser names this error
            for name in message:
                if name not in MESSAGE_FIELDS:
                    raise _bad(
                        f"Unknown message field {name!r}: a message has 'role' and 'content'.",
                        f"messages.{index}.{name}",
                        "unknown_parameter",
                    )
            if message.get("role") not in ROLES:
                raise _bad(f"role must be one of {', '.join(ROLES)}.", f"messages.{index}.role")
            if not isinstance(message.get("content"), str):
                raise _bad("content must be a string.", f"messages.{index}.content")
    return parse_openai_chat(body)


def usage_payload(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "estimated": usage.estimated,
    }


def cost_payload(cost_micros: int, *, charged: bool) -> dict[str, Any]:
    """Cost in micro-USD and as an exact decimal string (never a float)."""
    usd = (Decimal(cost_micros) / MICROS_PER_USD).quantize(Decimal("0.000001"))
    return {"micros": cost_micros, "usd": str(usd), "charged": charged}


def charged(call: calls.ChatOutcome | calls.ChatStream) -> bool:
    """Whether the cost was taken from the wallet (False for a BYOK call, logged as would-be).

    The call service does not expose the BYOK flag on its results yet; until it does (see the
    report for the one-field change), every call it makes is a charged platform-key call.
    """
    return not bool(getattr(call, "byok", False))


def route_payload(route: dict[str, Any], model: CatalogModel) -> dict[str, Any]:
    """The route taken. ``attempts`` lists each model tried; without failover that is one.
    The routing decision's own fields (``category``, ``complexity``, ``tier``, ``signals``,
    ``policy``, ``chain``; docs/routing.md) come along as the call service wrote them."""
    attempts = route.get("attempts")
    if attempts is None or (not attempts and route.get("cache") != "hit"):
        attempts = [{"model": model.id, "provider": model.provider, "status": "ok"}]
    return {
        **route,
        "requested": route.get("requested"),
        "chosen": route.get("chosen", model.id),
        "reason": route.get("reason", "requested"),
        "attempts": attempts,
    }


def result_payload(outcome: calls.ChatOutcome) -> dict[str, Any]:
    return {
        "id": outcome.request_id,
        "object": "chat.result",
        "model": outcome.model.id,
        "content": outcome.result.text,
        "finish_reason": outcome.result.finish_reason,
        "usage": usage_payload(outcome.result.usage),
        "cost": cost_payload(outcome.cost_micros, charged=charged(outcome)),
        "latency_ms": outcome.latency_ms,
        "route": route_payload(outcome.route, outcome.model),
    }


def limit_headers(source: object) -> dict[str, str]:
    """The x-ratelimit-* headers of a call, a stream or a refusal, when limits reported any."""
    limits = getattr(source, "limits", None)
    return dict(limits.headers()) if limits is not None else {}


def error_payload(exc: ApplicationError, *, request_id: str) -> dict[str, Any]:
    return error_body(
        message=exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        provider=getattr(exc, "provider", None),
        request_id=request_id,
    )


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


async def stream_payloads(
    stream: calls.ChatStream, first: StreamEvent | None, *, started: float
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The native event vocabulary as ``(event, data)`` pairs, for SSE and the WebSocket alike:
    ``delta`` per text chunk, then exactly one ``done`` or ``error``.

    Closes the call's event generator however this ends, so a consumer that stops early (client
    gone, cancelled) makes the call service settle what was streamed right away.
    """
    events = cast(AsyncGenerator[StreamEvent, None], stream.events)
    finish_reason = "stop"
    try:
        event = first
        while event is not None:
            if event.text:
                yield "delta", {"text": event.text}
            if event.finish_reason is not None:
                finish_reason = event.finish_reason
            event = await anext(events, None)
    except ENVELOPE_ERRORS as caught:
        # The database failing as the call settles is an error of ours, in the same envelope.
        exc = as_application_error(caught)
        yield "error", error_payload(exc, request_id=stream.request_id)
        return
    finally:
        await events.aclose()
    usage: Usage = stream.outcome.get("usage") or Usage(0, 0, estimated=True)
    yield (
        "done",
        {
            "id": stream.request_id,
            "model": stream.model.id,
            "finish_reason": finish_reason,
            "usage": usage_payload(usage),
            "cost": cost_payload(stream.outcome.get("cost_micros", 0), charged=charged(stream)),
            "route": route_payload(stream.route, stream.model),
            "latency_ms": _elapsed_ms(started),
        },
    )


async def _sse(
    stream: calls.ChatStream, first: StreamEvent | None, *, started: float
) -> AsyncIterator[bytes]:
    payloads = cast(
        AsyncGenerator[tuple[str, dict[str, Any]], None],
        stream_payloads(stream, first, started=started),
    )
    try:
        async for name, data in payloads:
            text = orjson.dumps(data).decode()
            yield f"event: {name}\ndata: {text}\n\n".encode()
    finally:
        await payloads.aclose()


@csrf_exempt
async def chat(request: HttpRequest) -> HttpResponseBase:
    started = time.perf_counter()
    request_id: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "POST":
            raise MethodNotAllowed("Use POST.")
        api_key = await authenticate(request)
        chat_input = parse_native_chat(json_body(request))
        if chat_input.stream:
            stream = await calls.chat_stream(
                api_key=api_key, chat=chat_input, request_id=request_id, endpoint=ENDPOINT
            )
            # Pull the first event before answering: a failure before any text still gets its
            # own status and the JSON envelope instead of a 200 stream carrying an error.
            first = await anext(stream.events, None)
            return StreamingHttpResponse(
                _sse(stream, first, started=started),
                content_type="text/event-stream",
                headers={
                    "Cache-Control": "no-cache",
                    "x-llmwise-model": stream.model.id,
                    **limit_headers(stream),
                },
            )
        outcome = await calls.chat_call(
            api_key=api_key, chat=chat_input, request_id=request_id, endpoint=ENDPOINT
        )
    except ApplicationError as exc:
        response = application_error_response(exc, request_id=request_id)
        for name, value in limit_headers(exc).items():
            response[name] = value
        return response
    return json_response(result_payload(outcome), headers=outcome_headers(outcome))
