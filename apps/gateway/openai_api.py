"""OpenAI-compatible endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Async views, so a slow provider call holds no thread. The official OpenAI SDKs work against
these with ``base_url=<LLMWise>/v1`` and an LLMWise API key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.authentication import MetaHeaders, api_key_secret, client_ip
from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate_cached, api_key_authenticate_limited
from llmwise.errors import (
    ENVELOPE_ERRORS,
    ApplicationError,
    Unauthenticated,
    application_error_response,
    as_application_error,
    error_body,
)
from llmwise.http import run_db
from llmwise.logging import log_context_bind

from . import calls
from .limits import LimitsSnapshot
from .providers.base import ChatMessage, StreamEvent, Usage
from .routing.auto import AUTO_MODEL
from .routing.policies import POLICY_NAME_MAX_CHARS
from .selectors import catalog_list

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_TEMPERATURE = 2.0


class RequestTooLarge(ApplicationError):
    status_code: int = 413
    code = "request_too_large"


class MethodNotAllowed(ApplicationError):
    status_code: int = 405
    code = "method_not_allowed"


def json_response(data: Any, *, headers: dict[str, str] | None = None) -> HttpResponse:
    """``JsonResponse`` with orjson (several times faster than the json module; UTF-8 text
    rather than \\u escapes, which every JSON client reads the same)."""
    return HttpResponse(orjson.dumps(data), content_type="application/json", headers=headers)


def _bad(message: str, param: str | None = None) -> ApplicationError:
    return ApplicationError(message, code="invalid_request", param=param)


async def authenticate(request: HttpRequest) -> ApiKey:
    """The usable API key of ``Authorization: Bearer lw-…`` (or ``x-api-key``), or 401."""
    secret = api_key_secret(MetaHeaders(request))
    if not secret:
        raise Unauthenticated("No API key: send 'Authorization: Bearer <your LLMWise API key>'.")
    ip = client_ip(request)
    key = api_key_authenticate_cached(secret=secret, client_ip=ip)
    if key is None:  # not remembered (or its last-used mark is due): the full check, in a thread
        key = await run_db(api_key_authenticate_limited, secret=secret, client_ip=ip)
    if key is None:
        raise Unauthenticated("Invalid, expired or revoked API key.")
    log_context_bind(org_id=key.organization_id)  # every later log line of the request names it
    return key


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig as exc:
        raise RequestTooLarge("The request body is too large.") from exc
    try:
        body = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("The body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _bad("The body must be a JSON object.")
    return body


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad("Only text content parts are supported.", f"messages.{index}.content")
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("A text part needs a 'text' string.", f"messages.{index}.content")
            parts.append(text)
        return "".join(parts)
    raise _bad("content must be a string or a list of text parts.", f"messages.{index}.content")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"{name} must be a number from {low} to {high}.", name)
    return float(value)


def parse_openai_chat(body: dict[str, Any]) -> calls.ChatInput:
    """Validate an OpenAI chat-completions body into a :class:`calls.ChatInput`."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' is required: a model id such as 'gpt-4o-mini', or 'auto'.", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("'messages' must be a non-empty list.", "messages")
    messages = []
    for index, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            raise _bad("Each message must be an object.", f"messages.{index}")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"role must be one of {', '.join(ROLES)}.", f"messages.{index}.role")
        messages.append(
            ChatMessage(role=role, content=_content_text(message.get("content"), index))
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _bad("max_tokens must be a positive integer.", "max_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise _bad("stop must be a string or up to 4 non-empty strings.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false.", "stream")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be a string.", "user")
    fallbacks, mesh = _parse_mesh(body)
    if model.strip() == AUTO_MODEL and fallbacks:
        raise _bad(
            "fallbacks cannot be combined with model 'auto': the auto-router builds its own "
            "chain of same-tier alternatives.",
            "fallbacks",
        )
    return calls.ChatInput(
        model=model.strip(),
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 0, 1),
        stop=tuple(stop) if stop else None,
        stream=stream,
        user=user,
        fallbacks=fallbacks,
        mesh=mesh,
        policy=_parse_policy(body),
    )


def _parse_policy(body: dict[str, Any]) -> str | None:
    """``"policy": "<name>"``: run under this routing policy of the organization instead of the
    key's pinned one or the org default. Whether it exists is the call service's to say (404)."""
    policy = body.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, str) or not policy.strip() or len(policy) > POLICY_NAME_MAX_CHARS:
        raise _bad(
            f"policy must be the name of one of your routing policies (at most "
            f"{POLICY_NAME_MAX_CHARS} characters).",
            "policy",
        )
    return policy.strip()


def _parse_mesh(body: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """LLMWise's failover fields: ``fallbacks`` (model ids tried in order after ``model`` on a
    retryable failure) and ``mesh`` (true: the default alternatives of the model's tier).
    Whether the models exist is the call service's to say (404 naming the model)."""
    raw = body.get("fallbacks")
    fallbacks: tuple[str, ...] = ()
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(m, str) and m.strip() for m in raw):
            raise _bad("fallbacks must be a list of model ids.", "fallbacks")
        fallbacks = tuple(m.strip() for m in raw)
        longest: int = settings.GATEWAY_MESH_MAX_CHAIN
        if len(fallbacks) + 1 > longest:
            raise _bad(
                f"A chain may hold at most {longest} models: the model and up to "
                f"{longest - 1} fallbacks ({len(fallbacks)} given).",
                "fallbacks",
            )
    mesh = body.get("mesh", False)
    if not isinstance(mesh, bool):
        raise _bad("mesh must be true or false.", "mesh")
    return fallbacks, mesh


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad(
            "stream_options must be an object like {'include_usage': true}.", "stream_options"
        )
    return bool(options.get("include_usage", False))


def _usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _sse_data(payload: dict[str, Any] | str) -> bytes:
    text = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + text + b"\n\n"


async def _sse(
    stream: calls.ChatStream, first: StreamEvent | None, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's chunk vocabulary: a role chunk, content deltas, a finish chunk, an optional usage
    chunk (``choices: []``), then ``[DONE]``. An upstream failure mid-stream ends the stream with
    one ``data: {"error": …}`` event in our envelope (the SDKs raise it)."""
    base = {
        "id": f"chatcmpl-{stream.request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": stream.model.id,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _sse_data({**base, "choices": [choice]})

    # The role chunk goes out in one write with the first event's (and the last chunks in one
    # write together): the same events, fewer packets before the first token.
    pending = chunk({"role": "assistant", "content": ""})
    try:
        event = first
        while event is not None:
            out, pending = pending, b""
            if event.text:
                out += chunk({"content": event.text})
            if event.finish_reason is not None:
                out += chunk({}, event.finish_reason)
            if out:
                yield out
            event = await anext(stream.events, None)
    except ENVELOPE_ERRORS as caught:
        # The database failing as the call settles is an error of ours, in the same envelope.
        exc = as_application_error(caught)
        yield pending + _sse_data(
            error_body(
                message=exc.message,
                error_type=exc.error_type,
                code=exc.code,
                param=exc.param,
                provider=getattr(exc, "provider", None),
                request_id=stream.request_id,
            )
        )
        return
    usage = stream.outcome.get("usage")
    if include_usage and usage is not None:
        pending += _sse_data(
            {
                **base,
                "choices": [],
                "usage": _usage_body(usage),
                "llmwise": {
                    "cost_micros": stream.outcome.get("cost_micros", 0),
                    "charged_micros": 0 if stream.byok else stream.outcome.get("cost_micros", 0),
                    "byok": stream.byok,
                    "route": stream.route,
                    "usage_estimated": usage.estimated,
                },
            }
        )
    yield pending + _sse_data("[DONE]")


def llmwise_body(outcome: calls.ChatOutcome) -> dict[str, Any]:
    """LLMWise's additions to a compatible-format answer (SDKs ignore unknown fields)."""
    return {
        "cost_micros": outcome.cost_micros,
        "charged_micros": outcome.charged_micros,
        "byok": outcome.byok,
        "latency_ms": outcome.latency_ms,
        "route": outcome.route,
        "usage_estimated": outcome.result.usage.estimated,
    }


def completion_body(outcome: calls.ChatOutcome) -> dict[str, Any]:
    usage = outcome.result.usage
    return {
        "id": f"chatcmpl-{outcome.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": outcome.model.id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.result.text},
                "finish_reason": outcome.result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage_body(usage),
        "llmwise": llmwise_body(outcome),
    }


def outcome_headers(outcome: calls.ChatOutcome) -> dict[str, str]:
    return {
        "x-llmwise-model": outcome.model.id,
        # What left the wallet: 0 for a BYOK call (its would-be cost is in the body and the log).
        "x-llmwise-cost-micros": str(outcome.charged_micros),
        "x-llmwise-overhead-ms": str(outcome.overhead_ms),
        **(outcome.limits.headers() if outcome.limits else {}),
        # Only when the org's response cache was consulted (enabled, not zero retention).
        **({"x-llmwise-cache": outcome.cache} if outcome.cache else {}),
    }


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    request_id: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "POST":
            raise MethodNotAllowed("Use POST.")
        api_key = await authenticate(request)
        body = json_body(request)
        chat = parse_openai_chat(body)
        if chat.stream:
            include_usage = _include_usage(body)
            stream = await calls.chat_stream(
                api_key=api_key, chat=chat, request_id=request_id, endpoint="openai.chat"
            )
            # Pull the first event before answering: a failure before any text still gets a
            # proper status and the JSON envelope instead of a broken 200 stream.
            first = await anext(stream.events, None)
            return StreamingHttpResponse(
                _sse(stream, first, include_usage=include_usage),
                content_type="text/event-stream",
                headers={
                    "Cache-Control": "no-cache",
                    "x-llmwise-model": stream.model.id,
                    **(stream.limits.headers() if stream.limits else {}),
                },
            )
        outcome = await calls.chat_call(
            api_key=api_key, chat=chat, request_id=request_id, endpoint="openai.chat"
        )
    except ApplicationError as exc:
        response = application_error_response(exc, request_id=request_id)
        limits: LimitsSnapshot | None = getattr(exc, "limits", None)
        for name, value in (limits.headers() if limits else {}).items():
            response[name] = value
        return response
    return json_response(completion_body(outcome), headers=outcome_headers(outcome))


async def models(request: HttpRequest) -> HttpResponse:
    request_id: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "GET":
            raise MethodNotAllowed("Use GET.")
        api_key = await authenticate(request)
        listed = await sync_to_async(lambda: list(catalog_list()))()
    except ApplicationError as exc:
        return application_error_response(exc, request_id=request_id)
    allowed = set(api_key.allowed_models)
    data = [
        {"id": m.id, "object": "model", "created": 0, "owned_by": m.provider}
        for m in listed
        if not allowed or m.id in allowed
    ]
    return JsonResponse({"object": "list", "data": data})
