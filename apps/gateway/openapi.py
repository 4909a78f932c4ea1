"""OpenAPI description of the gateway's own endpoints, added to drf-spectacular's schema.

The hot-path endpoints (``/v1/chat/completions``, ``/v1/models``, ``/api/v1/chat``,
``/v1/messages``) are plain async Django views, not DRF, so drf-spectacular cannot see them. This
module describes them by hand and :func:`gateway_paths_hook` (a ``POSTPROCESSING_HOOKS`` entry)
merges them into the generated schema served at ``/api/schema``. Apps above the gateway describe
their own async endpoints the same way, with the public builders here (:func:`operation`,
:func:`error_responses`, :func:`native_chat_properties`, :func:`hand_written_merge`, ...) and a
hook of their own listed after this one (``apps/orchestration/openapi.py``).

Two rules keep the schema honest:

* an endpoint is described only when its URL is actually routed, so the schema never documents a
  path that answers 404 (the native and Anthropic endpoints appear as soon as they are wired);
* an operation drf-spectacular already generated (a DRF view with its own serializers) is kept as
  generated: the view's code is then the better source of truth.

Every operation gets runnable examples (``x-codeSamples``: curl, Python, Node.js, which the
reference page at ``/docs/api/`` shows) for this server, built from its request body's example;
the SDK-compatible endpoints show the official SDKs instead of raw HTTP.

Hand-written descriptions drift; ``tests/gateway/test_api_docs_live.py`` validates real answers of
each endpoint against these schemas, so a change to a response shape fails until this file follows.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from django.conf import settings
from django.urls import Resolver404, resolve
from drf_spectacular.drainage import warn

from apps.accounts.schema import ApiKeyAuthenticationScheme

from . import sdk_examples

Schema = dict[str, Any]
PathBuilder = Callable[[], Schema]

SCHEMAS_REF: Final = "#/components/schemas/"
HEADERS_REF: Final = "#/components/headers/"
ERROR_ENVELOPE: Final = "ErrorEnvelope"
ANTHROPIC_ERROR_ENVELOPE: Final = "AnthropicErrorEnvelope"
API_KEY_HEADER_SCHEME: Final = "ApiKeyHeader"
CODE_SAMPLES: Final = "x-codeSamples"  # Redoc's extension: tabs of examples per operation
JSON: Final = "application/json"
SSE: Final = "text/event-stream"

TAG_OPENAI: Final = "OpenAI-compatible"
TAG_NATIVE: Final = "Native"
TAG_ANTHROPIC: Final = "Anthropic-compatible"

EXAMPLE_REQUEST_ID: Final = "req_6f1c2b0e9d8a4c7b8e5f3a2d1c0b9a87"
MAX_STOP_SEQUENCES: Final = 4
MAX_FALLBACKS: Final = 4


# --- schema builders ----------------------------------------------------------------------------
def ref(name: str) -> Schema:
    """A reference to the component schema ``name``."""
    return {"$ref": SCHEMAS_REF + name}


def header_ref(name: str) -> Schema:
    return {"$ref": HEADERS_REF + name}


def _described(schema: Schema, description: str | None, example: Any = None) -> Schema:
    if description is not None:
        schema["description"] = description
    if example is not None:
        schema["example"] = example
    return schema


def count(description: str | None = None, *, minimum: int = 0, example: Any = None) -> Schema:
    """An integer at least ``minimum`` (tokens, micro-USD, milliseconds, indexes...)."""
    return _described({"type": "integer", "minimum": minimum}, description, example)


def string(description: str | None = None, *, example: Any = None, **extra: Any) -> Schema:
    return _described({"type": "string", **extra}, description, example)


def enum(*values: str, description: str | None = None, example: Any = None) -> Schema:
    return _described({"type": "string", "enum": list(values)}, description, example)


def flag(description: str | None = None, *, default: bool | None = None) -> Schema:
    schema: Schema = {"type": "boolean"}
    if default is not None:
        schema["default"] = default
    return _described(schema, description)


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.0 spelling; a reference is wrapped, as 3.0 requires)."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def array(items: Schema, description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "array", "items": items, **extra}, description)


def obj(
    properties: Mapping[str, Schema],
    required: Iterable[str] = (),
    description: str | None = None,
    **extra: Any,
) -> Schema:
    """An object with ``properties``; ``required`` in the given order."""
    schema: Schema = {"type": "object"}
    _described(schema, description)
    schema["properties"] = dict(properties)
    names = list(required)
    if names:
        schema["required"] = names
    schema.update(extra)
    return schema


def strings(**extra: Any) -> Schema:
    """A list of strings (model ids, stop sequences...)."""
    return array({"type": "string", **extra.pop("items", {})}, **extra)


# --- overview (appended to SPECTACULAR_SETTINGS["DESCRIPTION"]) -------------------------------

OVERVIEW: Final = """
**Authentication.** Every call carries an LLMWise API key (`lw-…`, created in the dashboard) as
`Authorization: Bearer lw-…`. The gateway endpoints also accept it as `x-api-key: lw-…`, which is
what the Anthropic SDK sends.

**SDKs.** Point the official OpenAI SDKs at `<this server>/v1` (`base_url` in Python, `baseURL` in
Node) and the Anthropic SDK at `<this server>`; nothing else changes.

**Money.** Amounts are integers in micro-USD (1 USD = 1,000,000). Before the upstream call the
worst case (prompt estimate + `max_tokens`) is held on the wallet; after it, the real usage is
charged and the rest released. A call the wallet cannot cover answers 402 and is never sent.

**Errors.** Every failure answers one OpenAI-shaped envelope (`ErrorEnvelope`) with the matching
HTTP status; the Anthropic-compatible endpoint answers Anthropic's shape instead
(`AnthropicErrorEnvelope`, same codes), so each SDK raises its own typed errors. Provider errors
are translated, never passed through: `provider` names the upstream that failed.

**Headers.** Every response carries `x-request-id` (yours if you sent a sane one, else ours).
Successful calls add `x-llmwise-model` (the model that answered), `x-llmwise-cost-micros` (the
charge) and `x-llmwise-overhead-ms` (time spent in the gateway, the upstream call excluded);
`x-llmwise-cache: hit | miss` when the organization's response cache is on.
429 and 503 (Anthropic endpoint: 529) answers carry `Retry-After` (seconds) when a wait is known.

**Examples.** Each operation shows runnable examples for this server (curl, Python, Node.js)
that read the key from the `LLMWISE_API_KEY` environment variable.
""".strip()


# --- shared components ------------------------------------------------------------------------


def _header(description: str, schema: Schema) -> Schema:
    return {"description": description, "schema": schema}


HEADERS: Final[dict[str, Schema]] = {
    "RequestId": _header(
        "This request's id: the client's own `x-request-id` when it sent a sane "
        "one (8 to 128 of `A-Za-z0-9._:-`), otherwise `req_<32 hex>`. Quote it to support; "
        "`GET /api/v1/requests/{request_id}` looks the call up.",
        string(example=EXAMPLE_REQUEST_ID),
    ),
    "LLMWiseModel": _header(
        "The catalog id of the model that answered (after aliasing and routing).",
        string(example="gpt-4o-mini"),
    ),
    "LLMWiseCostMicros": _header(
        "What this call was charged, in micro-USD (0 for BYOK calls). Absent on "
        "streamed responses, whose cost is known only at the end: read it from the final "
        "usage event instead.",
        count(example=42),
    ),
    "LLMWiseOverheadMs": _header(
        "Milliseconds spent in the gateway itself (auth, reserve, settle, log), "
        "the upstream call excluded. Absent on streamed responses.",
        count(example=2),
    ),
    "RetryAfter": _header(
        "Seconds to wait before retrying (rate limits, overloaded upstreams).",
        count(minimum=1, example=7),
    ),
    "AnthropicRequestId": _header(
        "The request id again, where the Anthropic SDKs look for it.",
        string(example=EXAMPLE_REQUEST_ID),
    ),
    "WWWAuthenticate": _header(
        "The expected scheme: `Bearer`.", string(example='Bearer realm="api"')
    ),
}

# The routing decision's fields, in every route (OpenAI/Anthropic `llmwise.route`, native `route`).
_ROUTE_DECISION: Final[Schema] = {
    "category": string(example="qa"),
    "complexity": enum("low", "medium", "high"),
    "tier": enum("budget", "standard", "frontier"),
    "signals": strings(),
    "chain": strings(),
    "cache": enum(
        "hit", description="Answered from the organization's response cache (no attempts)."
    ),
    "policy": {
        "type": "object",
        "description": "The routing policy the request ran under: name, version, "
        "rule_index, rule, source (request / api_key / org_default), excluded models.",
        "additionalProperties": True,
    },
}

_ROUTE: Final[Schema] = obj(
    {
        "requested": string(example="auto"),
        "chosen": nullable(string(example="gpt-4o-mini")),
        "reason": string(example="qa, low complexity → budget tier: cheapest healthy model"),
        **_ROUTE_DECISION,
        "attempts": array({"type": "object", "additionalProperties": True}),
    },
    ["requested", "chosen", "reason"],
    "How the request was routed: the model asked for, the model that answered, "
    "and why (`attempts` lists each model tried, when routing tried more than one). "
    'docs/routing.md, "How a request is routed", describes every field.',
)

_TEXT_PART: Final[Schema] = obj({"type": enum("text"), "text": string()}, ["type", "text"])
_TEXT_OR_PARTS: Final[list[Schema]] = [{"type": "string"}, array(_TEXT_PART)]

# The generation parameters both chat formats of ours take (OpenAI's and the native one).
_SAMPLING: Final[dict[str, Schema]] = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
}
_STOP: Final[Schema] = {
    "oneOf": [
        string(minLength=1),
        strings(items={"minLength": 1}, maxItems=MAX_STOP_SEQUENCES),
    ]
}
_USER: Final[Schema] = string("Your end-user id, passed upstream.")
_STREAM_OFF: Final[Schema] = flag(default=False)
# Failover and policy fields of the chat formats that route (docs/routing.md).
_ROUTING_FIELDS: Final[dict[str, Schema]] = {
    "fallbacks": strings(
        maxItems=MAX_FALLBACKS,
        description="Models tried in order after `model` on a retryable upstream "
        "failure, before any output (docs/routing.md). Unknown ids are a 404.",
    ),
    "mesh": flag(
        "Without `fallbacks`: fail over to the default alternatives of the model's tier.",
        default=False,
    ),
    "policy": string(
        "Run under this routing policy of your organization (else the "
        "key's pinned policy, else the organization's default). Unknown: 404 "
        "`policy_not_found`."
    ),
}
_TOKENS: Final[dict[str, Schema]] = {
    "prompt_tokens": count(),
    "completion_tokens": count(),
    "total_tokens": count(),
}
_ESTIMATED_USAGE: Final = (
    "True when the provider reported no usage and the gateway counted the tokens itself."
)

# The inner object of every error envelope (also a failed call's `error` in orchestration).
ERROR_OBJECT: Final[Schema] = obj(
    {
        "message": string(
            "What went wrong and what to do, safe to show.",
            example="The model 'gpt-9' does not exist. GET /v1/models lists the models.",
        ),
        "type": string(
            "The error class: `invalid_request_error`, "
            "`authentication_error`, `permission_error`, `not_found_error`, "
            "`insufficient_credit`, `billing_error`, `rate_limit_error`, "
            "`upstream_error`, `timeout_error`, `api_error`.",
            example="not_found_error",
        ),
        "code": string(
            "A stable code to branch on, e.g. `invalid_api_key`, "
            "`invalid_request`, `model_not_found`, `model_not_allowed`, "
            "`max_tokens_too_large`, `insufficient_credit`, `request_too_large`, "
            "`upstream_rate_limited`, `upstream_overloaded`, "
            "`upstream_server_error`, `upstream_timeout`, "
            "`upstream_invalid_response`, `context_length_exceeded`.",
            example="model_not_found",
        ),
        "param": nullable(
            string("The request field at fault (dotted path), if any.", example="model")
        ),
        "provider": nullable(string("The upstream provider that failed, for upstream errors.")),
        "request_id": string("Same as the `x-request-id` header.", example=EXAMPLE_REQUEST_ID),
    },
    ["message", "type", "code", "param", "provider", "request_id"],
)


def native_chat_properties() -> dict[str, Schema]:
    """The native chat body's conversation and generation fields (no model, no routing): what
    every endpoint built on the native format takes (``/api/v1/chat``, orchestration)."""
    return {
        "messages": array(
            obj(
                {
                    "role": enum("system", "user", "assistant"),
                    "content": string(),
                },
                ["role", "content"],
                additionalProperties=False,
            ),
            minItems=1,
        ),
        "stream": _STREAM_OFF,
        "max_tokens": count(
            "Defaults to the model's catalog default; the wallet hold is sized to it.",
            minimum=1,
        ),
        **_SAMPLING,
        "stop": _STOP,
        "user": _USER,
    }


SCHEMAS: Final[dict[str, Schema]] = {
    ERROR_ENVELOPE: obj(
        {"error": ERROR_OBJECT},
        ["error"],
        "The one error shape of every API response that fails (OpenAI-shaped, "
        "so the SDKs raise typed errors from it).",
    ),
    # --- OpenAI-compatible ---
    "ChatCompletionMessage": obj(
        {
            "role": enum("system", "developer", "user", "assistant"),
            "content": {
                "oneOf": [{"type": "string"}, array(_TEXT_PART, minItems=1)],
                "description": "A string, or a list of text parts (joined). Only text is "
                "supported; image and audio parts answer 400.",
            },
            "name": string("Accepted, not forwarded."),
        },
        ["role", "content"],
    ),
    "ChatCompletionRequest": obj(
        {
            "model": string(
                "A catalog model id or alias (`GET /v1/models`).", example="gpt-4o-mini"
            ),
            "messages": array(ref("ChatCompletionMessage"), minItems=1),
            "max_tokens": count(
                "Cap on generated tokens; the hold on your wallet is sized to "
                "it. Defaults to the model's catalog default; above the model's maximum "
                "answers 400 `max_tokens_too_large`.",
                minimum=1,
            ),
            "max_completion_tokens": count(
                "OpenAI's newer name for `max_tokens`; wins when both are sent.", minimum=1
            ),
            **_SAMPLING,
            "stop": {**_STOP, "description": "Up to 4 stop sequences."},
            "stream": flag(
                "Answer as Server-Sent Events (`text/event-stream`): "
                "`chat.completion.chunk` objects, then `data: [DONE]`.",
                default=False,
            ),
            "stream_options": obj(
                {
                    "include_usage": flag(
                        "Send one last chunk with `choices: []`, `usage` and "
                        "`llmwise` (cost, route) before `[DONE]`.",
                        default=False,
                    )
                }
            ),
            "user": _USER,
            **_ROUTING_FIELDS,
        },
        ["model", "messages"],
        "OpenAI's chat-completions body. Parameters not listed here are not "
        "forwarded to the provider.",
        example={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "Why is the sky blue?"},
            ],
            "max_tokens": 200,
        },
    ),
    "ChatCompletionUsage": obj(
        {
            **_TOKENS,
            "prompt_tokens_details": obj(
                {
                    "cached_tokens": count(
                        "Part of `prompt_tokens` served from the provider's prompt cache."
                    )
                }
            ),
            "completion_tokens_details": obj(
                {"reasoning_tokens": count("Part of `completion_tokens` spent reasoning.")}
            ),
        },
        _TOKENS,
    ),
    "LLMWiseCallInfo": obj(
        {
            "cost_micros": count(
                "What the call costs at catalog prices, in micro-USD (for a "
                "BYOK call: what it would have cost)."
            ),
            "charged_micros": count("What left your wallet, in micro-USD (0 for BYOK calls)."),
            "byok": flag("The call used your organization's own provider key."),
            "latency_ms": count("Whole call as the gateway saw it (absent on stream chunks)."),
            "route": _ROUTE,
            "usage_estimated": flag(_ESTIMATED_USAGE),
        },
        ["cost_micros", "charged_micros", "byok", "route", "usage_estimated"],
        "LLMWise's additions to an OpenAI response (SDKs ignore unknown fields; "
        "read them from the raw JSON or `model_extra`).",
    ),
    "ChatCompletion": obj(
        {
            "id": string("`chatcmpl-` + the request id.", example=f"chatcmpl-{EXAMPLE_REQUEST_ID}"),
            "object": enum("chat.completion"),
            "created": {"type": "integer", "description": "Unix seconds."},
            "model": string("The model that answered."),
            "choices": array(
                obj(
                    {
                        "index": {"type": "integer"},
                        "message": obj(
                            {"role": enum("assistant"), "content": string()},
                            ["role", "content"],
                        ),
                        "finish_reason": ref("FinishReason"),
                        "logprobs": {"type": "object", "nullable": True},
                    },
                    ["index", "message", "finish_reason"],
                )
            ),
            "usage": ref("ChatCompletionUsage"),
            "llmwise": ref("LLMWiseCallInfo"),
        },
        ["id", "object", "created", "model", "choices", "usage", "llmwise"],
    ),
    "FinishReason": enum(
        "stop",
        "length",
        "content_filter",
        "tool_calls",
        "error",
        description="Every provider's stop reason mapped onto OpenAI's values.",
    ),
    "ChatCompletionChunk": obj(
        {
            "id": string(),
            "object": enum("chat.completion.chunk"),
            "created": {"type": "integer"},
            "model": string(),
            "choices": array(
                obj(
                    {
                        "index": {"type": "integer"},
                        "delta": obj({"role": enum("assistant"), "content": string()}),
                        "finish_reason": nullable(ref("FinishReason")),
                        "logprobs": {"type": "object", "nullable": True},
                    },
                    ["index", "delta", "finish_reason"],
                ),
                "One choice; empty in the final usage chunk.",
            ),
            "usage": ref("ChatCompletionUsage"),
            "llmwise": ref("LLMWiseCallInfo"),
        },
        ["id", "object", "created", "model", "choices"],
        "One SSE `data:` line of a streamed chat completion.",
    ),
    "Model": obj(
        {
            "id": string(example="claude-sonnet-4.5"),
            "object": enum("model"),
            "created": {"type": "integer"},
            "owned_by": string("The provider serving it.", example="anthropic"),
        },
        ["id", "object", "created", "owned_by"],
    ),
    "ModelList": obj({"object": enum("list"), "data": array(ref("Model"))}, ["object", "data"]),
    # --- native (apps/gateway/native_api.py) ---
    "NativeChatRequest": obj(
        {
            "model": string(
                "A catalog model id or alias, or `auto`: the auto-router picks "
                "the cheapest model that fits the task (the `route` explains the choice).",
                example="gpt-4o-mini",
            ),
            **native_chat_properties(),
            **_ROUTING_FIELDS,
        },
        ["model", "messages"],
        "LLMWise's own chat format. Stricter than the OpenAI one: unknown fields "
        "(a typo such as `max_token`) answer 400 `unknown_parameter` instead of being ignored.",
        additionalProperties=False,
        example={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Summarise: the cat sat on the mat."}],
            "max_tokens": 100,
        },
    ),
    "NativeUsage": obj(
        {
            **_TOKENS,
            "cached_tokens": count(),
            "reasoning_tokens": count(),
            "estimated": flag(_ESTIMATED_USAGE),
        },
        [*_TOKENS, "cached_tokens", "reasoning_tokens", "estimated"],
    ),
    "NativeCost": obj(
        {
            "micros": count("Micro-USD."),
            "usd": string(
                "The same amount as an exact decimal string (never a float).", example="0.000042"
            ),
            "charged": flag("False for BYOK calls: logged at their would-be cost, not charged."),
        },
        ["micros", "usd", "charged"],
    ),
    "NativeRoute": obj(
        {
            "requested": nullable(string()),
            "chosen": string(),
            "reason": string(example="requested"),
            **_ROUTE_DECISION,
            "attempts": array(
                obj(
                    {
                        "model": string(),
                        "provider": string(),
                        "status": enum("ok", "error", "skipped", example="ok"),
                        "error_code": string(example=""),
                        "latency_ms": {"type": "integer"},
                    }
                )
            ),
        },
        ["requested", "chosen", "reason", "attempts"],
        "The route taken: the model asked for, the one that answered, why, and "
        "every model tried (one entry without failover).",
    ),
    "NativeChatResult": obj(
        {
            "id": string("The request id (`x-request-id`)."),
            "object": enum("chat.result"),
            "model": string("The model that answered."),
            "content": string("The answer's text."),
            "finish_reason": ref("FinishReason"),
            "usage": ref("NativeUsage"),
            "cost": ref("NativeCost"),
            "latency_ms": count(),
            "route": ref("NativeRoute"),
        },
        [
            "id",
            "object",
            "model",
            "content",
            "finish_reason",
            "usage",
            "cost",
            "latency_ms",
            "route",
        ],
        "The answer with everything needed to reconcile it.",
    ),
    "NativeDeltaEvent": obj(
        {"text": string()},
        ["text"],
        "`event: delta`: the next piece of the answer's text.",
    ),
    "NativeDoneEvent": obj(
        {
            "id": string(),
            "model": string(),
            "finish_reason": ref("FinishReason"),
            "usage": ref("NativeUsage"),
            "cost": ref("NativeCost"),
            "route": ref("NativeRoute"),
            "latency_ms": count(),
        },
        ["id", "model", "finish_reason", "usage", "cost", "route", "latency_ms"],
        "`event: done`: the last event of a stream that completed.",
    ),
    # --- Anthropic-compatible (apps/gateway/anthropic_api.py) ---
    "AnthropicMessagesRequest": obj(
        {
            "model": string(example="claude-haiku-4.5"),
            "max_tokens": count(minimum=1),
            "messages": array(
                obj(
                    {"role": enum("user", "assistant"), "content": {"oneOf": _TEXT_OR_PARTS}},
                    ["role", "content"],
                ),
                minItems=1,
            ),
            "system": {"oneOf": _TEXT_OR_PARTS},
            "stream": _STREAM_OFF,
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": _SAMPLING["top_p"],
            "stop_sequences": strings(items={"minLength": 1}, maxItems=MAX_STOP_SEQUENCES),
            "metadata": obj({"user_id": string("Passed upstream as the user.")}),
        },
        ["model", "max_tokens", "messages"],
        "Anthropic's Messages body, translated onto the same core (any catalog "
        "model answers it, not only Claude). Fields Anthropic knows but LLMWise does not "
        "support here (tools, thinking, top_k, ...) answer 400 `unsupported_parameter` rather "
        "than being dropped.",
        additionalProperties=False,
        example={
            "model": "claude-haiku-4.5",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    ),
    "AnthropicMessage": obj(
        {
            "id": string("`msg_` + the request id."),
            "type": enum("message"),
            "role": enum("assistant"),
            "model": string("The model that answered."),
            "content": array(_TEXT_PART),
            "stop_reason": enum("end_turn", "max_tokens", "tool_use", "refusal"),
            "stop_sequence": nullable(
                string("Always null: which stop sequence ended the call is not known.")
            ),
            "usage": obj(
                {
                    "input_tokens": count("Prompt tokens not read from the cache."),
                    "output_tokens": count(),
                    "cache_read_input_tokens": count(),
                    "cache_creation_input_tokens": count(),
                },
                ["input_tokens", "output_tokens"],
            ),
            "llmwise": ref("LLMWiseCallInfo"),
        },
        ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    ),
    ANTHROPIC_ERROR_ENVELOPE: obj(
        {
            "type": enum("error"),
            "error": obj(
                {
                    "type": string(
                        "Anthropic's error type for the status: "
                        "`invalid_request_error`, `authentication_error`, `billing_error`, "
                        "`permission_error`, `not_found_error`, `request_too_large`, "
                        "`rate_limit_error`, `timeout_error`, `overloaded_error`, `api_error`."
                    ),
                    "message": string(),
                    "code": string(),
                    "param": nullable(string()),
                    "provider": nullable(string()),
                },
                ["type", "message", "code", "param", "provider"],
            ),
            "request_id": string(),
        },
        ["type", "error", "request_id"],
        "Errors of the Anthropic-compatible endpoint only: Anthropic's own shape, "
        "so its SDKs raise their usual exceptions. `code`, `param` and `provider` mean what "
        "they mean in `ErrorEnvelope`.",
    ),
}


# --- operations -------------------------------------------------------------------------------

ERROR_MEANINGS: Final[dict[int, str]] = {
    400: "Invalid request: malformed JSON, a missing or mistyped field, empty messages, "
    "`max_tokens` above the model's maximum, or a parameter the chosen provider cannot honour. "
    "Nothing is charged.",
    401: "Missing, invalid, expired or revoked API key (or, for BYOK, your provider key was "
    "refused). Nothing is charged.",
    402: "Not enough credit for the hold this call needs (or a key's spend cap is reached). "
    "Nothing is sent upstream.",
    403: "This API key may not use the requested model. Nothing is charged.",
    404: "Unknown model id. `GET /v1/models` lists the catalog.",
    413: "The request body is larger than the gateway accepts.",
    429: "A rate limit (the key's, the organization's, or the provider's) was hit. Wait "
    "`Retry-After` seconds.",
    502: "The provider failed or answered garbage; the hold was settled for what was used.",
    503: "The provider is overloaded; retry after `Retry-After` seconds.",
    504: "The provider did not answer in time.",
    529: "The provider is overloaded (Anthropic's status for it; the other endpoints answer "
    "503); retry after `Retry-After` seconds.",
}
CALL_ERRORS: Final = (400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
ANTHROPIC_CALL_ERRORS: Final = (400, 401, 402, 403, 404, 413, 429, 502, 504, 529)
LIST_ERRORS: Final = (401,)
RETRY_AFTER_STATUSES: Final = frozenset({429, 503, 529})


def error_responses(
    statuses: tuple[int, ...],
    *,
    envelope: str = ERROR_ENVELOPE,
    meanings: Mapping[int, str] | None = None,
) -> dict[str, Schema]:
    """The error responses of an operation, each in ``envelope``; ``meanings`` overrides the
    chat endpoints' wording per status."""
    responses: dict[str, Schema] = {}
    for status in statuses:
        headers: dict[str, Schema] = {"x-request-id": header_ref("RequestId")}
        if status in RETRY_AFTER_STATUSES:
            headers["Retry-After"] = header_ref("RetryAfter")
        if status == 401:
            headers["WWW-Authenticate"] = header_ref("WWWAuthenticate")
        responses[str(status)] = {
            "description": {**ERROR_MEANINGS, **(meanings or {})}[status],
            "headers": headers,
            "content": {JSON: {"schema": ref(envelope)}},
        }
    return responses


def request_id_headers() -> dict[str, Schema]:
    return {"x-request-id": header_ref("RequestId")}


def _success_headers() -> dict[str, Schema]:
    return {
        **request_id_headers(),
        "x-llmwise-model": header_ref("LLMWiseModel"),
        "x-llmwise-cost-micros": header_ref("LLMWiseCostMicros"),
        "x-llmwise-overhead-ms": header_ref("LLMWiseOverheadMs"),
    }


def security() -> list[Schema]:
    return [{ApiKeyAuthenticationScheme.name: []}, {API_KEY_HEADER_SCHEME: []}]


def sse_event(payloads: Mapping[str, str]) -> Schema:
    """One Server-Sent Event of a stream, as OpenAPI 3.0 tools read a ``text/event-stream`` body
    (each event an object: its ``event`` name and its ``data`` text). 3.0 cannot type the JSON
    inside ``data``, so ``payloads`` (event name → what its data is, naming the component)
    is spelled out in the description."""
    listed = "; ".join(f"`{event}`: {payload}" for event, payload in payloads.items())
    return obj(
        {
            "event": enum(*payloads, description="The event's name (`message` when unnamed)."),
            "data": string(f"The event's payload, as JSON text. {listed}."),
        },
        ["event", "data"],
        "One Server-Sent Event (`event:` and `data:` lines, then a blank line).",
    )


def ok_response(
    description: str,
    *,
    body: str,
    headers: dict[str, Schema] | None = None,
    stream: Schema | None = None,
    stream_example: str | None = None,
) -> Schema:
    """A 200 answering the component ``body`` as JSON, and ``stream`` (one event's schema, see
    :func:`sse_event`) as ``text/event-stream`` when the operation streams."""
    content: Schema = {JSON: {"schema": ref(body)}}
    if stream is not None:
        content[SSE] = {"schema": stream}
        if stream_example is not None:
            content[SSE]["example"] = stream_example
    return {
        "description": description,
        "headers": headers if headers is not None else request_id_headers(),
        "content": content,
    }


def operation(
    *,
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    ok: Schema,
    errors: dict[str, Schema],
    body: str | None = None,
    parameters: list[Schema] | None = None,
    samples: list[Schema] | None = None,
) -> Schema:
    """One API-key-authenticated operation; ``body`` names the request body's component."""
    built: Schema = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "security": security(),
    }
    if parameters:
        built["parameters"] = parameters
    if body is not None:
        built["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    built["responses"] = {"200": ok, **errors}
    if samples:
        built[CODE_SAMPLES] = samples
    return built


# --- code samples -------------------------------------------------------------------------------
# Written for the server the schema is served from: "{base_url}" is replaced when the schema is
# built (:func:`code_samples_add`). The key always comes from the LLMWISE_API_KEY variable.
BASE_URL: Final = sdk_examples.BASE_URL_PLACEHOLDER
LANG_SHELL: Final = "Shell"
LANG_PYTHON: Final = "Python"
LANG_NODE: Final = "JavaScript"
BEARER_KEY_HEADER: Final = "Authorization: Bearer $LLMWISE_API_KEY"


def sample(lang: str, label: str, source: str) -> Schema:
    return {"lang": lang, "label": label, "source": source.strip() + "\n"}


def _literal(value: Any, *, python: bool, indent: int | None = None, step: int = 2) -> str:
    """``value`` as a JSON (or Python) literal: an object's members one per line, ``step``
    deeper than ``indent`` (when given); anything nested on one line."""
    if isinstance(value, bool):
        return ("True" if value else "False") if python else ("true" if value else "false")
    if value is None:
        return "None" if python else "null"
    if isinstance(value, dict):
        members = [f"{json.dumps(k)}: {_literal(v, python=python)}" for k, v in value.items()]
        if indent is None or not members:
            return "{" + ", ".join(members) + "}"
        pad = " " * (indent + step)
        return "{\n" + ",\n".join(pad + m for m in members) + "\n" + " " * indent + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(item, python=python) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def http_samples(
    method: str, path: str, body: Any = None, *, curl_key_header: str = BEARER_KEY_HEADER
) -> list[Schema]:
    """curl, Python (httpx) and Node.js (fetch) examples of a plain HTTP call."""
    url = BASE_URL + path
    verb = method.upper()
    curl = [f"curl {url}", f'  -H "{curl_key_header}"']
    python = [
        "import os",
        "",
        "import httpx",
        "",
        f"response = httpx.{method.lower()}(",
        f'    "{url}",',
        '    headers={"Authorization": f"Bearer {os.environ[\'LLMWISE_API_KEY\']}"},',
    ]
    node = [
        f'const response = await fetch("{url}", {{',
        f'  method: "{verb}",',
        "  headers: {",
        "    Authorization: `Bearer ${process.env.LLMWISE_API_KEY}`,",
    ]
    if body is not None:
        as_json = _literal(body, python=False, indent=2)
        # In single quotes for the shell; a quote inside ends them, escapes one and reopens.
        quoted = as_json.replace("'", "'\\''")
        curl += ['  -H "Content-Type: application/json"', f"  -d '{quoted}'"]
        python.append(f"    json={_literal(body, python=True, indent=4, step=4)},")
        node += [
            '    "Content-Type": "application/json",',
            "  },",
            f"  body: JSON.stringify({as_json}),",
        ]
    else:
        node.append("  },")
    python += ["    timeout=120,", ")", "print(response.status_code, response.json())"]
    node += ["});", "console.log(response.status, await response.json());"]
    return [
        sample(LANG_SHELL, "curl", " \\\n".join(curl)),
        sample(LANG_PYTHON, "Python", "\n".join(python)),
        sample(LANG_NODE, "Node.js", "\n".join(node)),
    ]


def _body_example(operation_: Schema, components: Schema) -> Any:
    schema = operation_.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema", {})
    if "$ref" in schema:
        schema = components.get("schemas", {}).get(schema["$ref"].removeprefix(SCHEMAS_REF), {})
    return schema.get("example")


def _fill_base_url(node: Any, base_url: str) -> Any:
    if isinstance(node, str):
        return sdk_examples.sdk_example(node, base_url=base_url)
    if isinstance(node, list):
        return [_fill_base_url(item, base_url) for item in node]
    if isinstance(node, dict):
        return {key: _fill_base_url(value, base_url) for key, value in node.items()}
    return node


def code_samples_add(
    result: Schema, *, base_url: str, bodies: Mapping[str, Any] | None = None
) -> None:
    """Give every operation of ``result`` its examples: its own (hand-written ones, for the SDK
    endpoints), else plain HTTP calls with the request body's example (``bodies`` supplies one
    by path where the generated schema has none)."""
    components = result.get("components", {})
    for path, item in result.get("paths", {}).items():
        for method, operation_ in item.items():
            if not isinstance(operation_, dict) or "responses" not in operation_:
                continue
            if CODE_SAMPLES not in operation_:
                body = (bodies or {}).get(path, _body_example(operation_, components))
                if method == "post" and body is None:
                    body = {}
                example_path = path.replace("{request_id}", EXAMPLE_REQUEST_ID)
                operation_[CODE_SAMPLES] = http_samples(method, example_path, body)
            operation_[CODE_SAMPLES] = _fill_base_url(operation_[CODE_SAMPLES], base_url)


def sdk_samples(
    method: str,
    path: str,
    *,
    python: str,
    node: str,
    body: Any = None,
    curl_key_header: str = BEARER_KEY_HEADER,
) -> list[Schema]:
    """curl, then the official SDKs' Python and Node.js instead of raw HTTP."""
    curl = http_samples(method, path, body, curl_key_header=curl_key_header)[0]
    return [curl, sample(LANG_PYTHON, "Python", python), sample(LANG_NODE, "Node.js", node)]


OPENAI_STREAM_DESCRIPTION: Final = """
With `"stream": true` the answer is `text/event-stream`. Each event is one line
`data: <ChatCompletionChunk JSON>` followed by a blank line:

1. a chunk whose delta is `{"role": "assistant", "content": ""}`;
2. one chunk per text delta, `{"content": "…"}`;
3. a chunk with an empty delta and `finish_reason` set;
4. with `stream_options.include_usage`, a chunk with `choices: []`, `usage` and `llmwise`
   (`cost_micros`, `charged_micros`, `byok`, `route`, `usage_estimated`);
5. `data: [DONE]`.

Failures before the first token answer a normal JSON error with its status. A failure after the
stream started ends it with one `data: {"error": {…}}` event (the `ErrorEnvelope`) and no
`[DONE]`; the SDKs raise it. The call is settled however the stream ends (completion, upstream
error, or your client disconnecting), for the tokens seen so far.
""".strip()


def _openai_chunk(choices: str, extra: str = "") -> str:
    return (
        'data: {"id":"chatcmpl-req_1","object":"chat.completion.chunk","created":1700000000,'
        f'"model":"gpt-4o-mini","choices":[{choices}]{extra}}}\n\n'
    )


def _openai_choice(delta: str, finish_reason: str) -> str:
    return f'{{"index":0,"delta":{delta},"finish_reason":{finish_reason},"logprobs":null}}'


OPENAI_STREAM_EXAMPLE: Final = (
    _openai_chunk(_openai_choice('{"role":"assistant","content":""}', "null"))
    + _openai_chunk(_openai_choice('{"content":"Hello"}', "null"))
    + _openai_chunk(_openai_choice("{}", '"stop"'))
    + _openai_chunk(
        "",
        ',"usage":{"prompt_tokens":9,"completion_tokens":1,'
        '"total_tokens":10},"llmwise":{"cost_micros":2,"charged_micros":2,"byok":false,'
        '"route":{"requested":"gpt-4o-mini","chosen":"gpt-4o-mini","reason":"requested"},'
        '"usage_estimated":false}',
    )
    + "data: [DONE]\n\n"
)
STREAMED_HEADERS_NOTE: Final = "Streamed answers carry `x-request-id` and `x-llmwise-model` only."


def _chat_completions() -> Schema:
    return {
        "post": operation(
            operation_id="openai_chat_completions_create",
            tag=TAG_OPENAI,
            summary="Create a chat completion (OpenAI-compatible)",
            description="OpenAI's `POST /v1/chat/completions`, answered by any catalog model. "
            "The official `openai` SDKs work unchanged with `base_url=<this server>/v1`.\n\n"
            + OPENAI_STREAM_DESCRIPTION,
            body="ChatCompletionRequest",
            ok=ok_response(
                "The completion (`application/json`), or with `stream: true` "
                "its Server-Sent Events (`text/event-stream`), one `ChatCompletionChunk` "
                "per `data:` line. " + STREAMED_HEADERS_NOTE,
                body="ChatCompletion",
                headers=_success_headers(),
                stream=sse_event(
                    {
                        "message": "a `ChatCompletionChunk` (an `ErrorEnvelope` when the "
                        "stream fails), and last the text `[DONE]`"
                    }
                ),
                stream_example=OPENAI_STREAM_EXAMPLE,
            ),
            errors=error_responses(CALL_ERRORS),
            samples=sdk_samples(
                "post",
                "/v1/chat/completions",
                body=SCHEMAS["ChatCompletionRequest"]["example"],
                python=sdk_examples.PYTHON_OPENAI,
                node=sdk_examples.NODE_OPENAI,
            ),
        )
    }


def _models() -> Schema:
    return {
        "get": operation(
            operation_id="openai_models_list",
            tag=TAG_OPENAI,
            summary="List models (OpenAI-compatible)",
            description="The enabled catalog models this API key may use (all of them unless "
            "the key is restricted to a list).",
            ok=ok_response("The models.", body="ModelList"),
            errors=error_responses(LIST_ERRORS),
            samples=sdk_samples(
                "get",
                "/v1/models",
                python=sdk_examples.PYTHON_OPENAI_MODELS,
                node=sdk_examples.NODE_OPENAI_MODELS,
            ),
        )
    }


NATIVE_STREAM_DESCRIPTION: Final = """
With `"stream": true` the answer is `text/event-stream` in one small vocabulary (also used by the
WebSocket `/ws/v1/chat`). Each event is `event: <name>` and `data: <JSON>`:

* `delta`, `{"text": "…"}`, once per piece of text;
* then exactly one of `done` (`NativeDoneEvent`: model, finish reason, usage, cost, route,
  latency) or `error` (the `ErrorEnvelope`, when the upstream failed mid-stream).

Failures before the first token answer a normal JSON error with its status. The call is settled
however the stream ends, for the tokens seen so far.
""".strip()

NATIVE_STREAM_EXAMPLE: Final = (
    'event: delta\ndata: {"text":"Hello"}\n\n'
    'event: delta\ndata: {"text":" there."}\n\n'
    'event: done\ndata: {"id":"req_1","model":"gpt-4o-mini","finish_reason":"stop",'
    '"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"cached_tokens":0,'
    '"reasoning_tokens":0,"estimated":false},"cost":{"micros":3,"usd":"0.000003",'
    '"charged":true},"route":{"requested":"gpt-4o-mini","chosen":"gpt-4o-mini",'
    '"reason":"requested","attempts":[{"model":"gpt-4o-mini","provider":"openai",'
    '"status":"ok","error_code":"","latency_ms":410}]},"latency_ms":412}\n\n'
)


def _native_chat() -> Schema:
    return {
        "post": operation(
            operation_id="native_chat_create",
            tag=TAG_NATIVE,
            summary="Chat (native format, with cost and route)",
            description="LLMWise's own endpoint: the answer carries the model used, finish "
            "reason, usage, cost, latency and the route taken.\n\n" + NATIVE_STREAM_DESCRIPTION,
            body="NativeChatRequest",
            ok=ok_response(
                "The result (`application/json`), or with `stream: true` "
                "its Server-Sent Events, each event named with its payload below. "
                + STREAMED_HEADERS_NOTE,
                body="NativeChatResult",
                headers=_success_headers(),
                stream=sse_event(
                    {
                        "delta": "`NativeDeltaEvent`",
                        "done": "`NativeDoneEvent`",
                        "error": f"`{ERROR_ENVELOPE}`",
                    }
                ),
                stream_example=NATIVE_STREAM_EXAMPLE,
            ),
            errors=error_responses(CALL_ERRORS),
        )
    }


ANTHROPIC_STREAM_DESCRIPTION: Final = """
With `"stream": true` the answer is Anthropic's event stream for one text block:
`message_start` (input tokens estimated), `content_block_start`, `ping`, `content_block_delta`
(`text_delta`) per piece of text, `content_block_stop`, `message_delta` (`stop_reason` and the
real cumulative `usage`), `message_stop`. A failure after the start ends the stream with one
`error` event carrying the `AnthropicErrorEnvelope`.
""".strip()


ANTHROPIC_STREAM_EVENTS: Final = (
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
)


def _anthropic_messages() -> Schema:
    headers = {**_success_headers(), "request-id": header_ref("AnthropicRequestId")}
    errors = error_responses(ANTHROPIC_CALL_ERRORS, envelope=ANTHROPIC_ERROR_ENVELOPE)
    for response in errors.values():
        response["headers"]["request-id"] = header_ref("AnthropicRequestId")
        response["headers"].pop("WWW-Authenticate", None)  # Anthropic's 401 sends none
    return {
        "post": operation(
            operation_id="anthropic_messages_create",
            tag=TAG_ANTHROPIC,
            summary="Create a message (Anthropic-compatible)",
            description="Anthropic's `POST /v1/messages`, so the `anthropic` SDKs work with "
            "`base_url=<this server>` (they send the key as `x-api-key`; `Authorization: "
            "Bearer` works too). Answers, streams and errors come back in Anthropic's own "
            "shapes, with LLMWise's cost and route under `llmwise`.\n\n"
            + ANTHROPIC_STREAM_DESCRIPTION,
            parameters=[
                {
                    "name": "anthropic-version",
                    "in": "header",
                    "required": False,
                    "description": "Sent by the Anthropic SDKs; accepted and not needed.",
                    "schema": string(example="2023-06-01"),
                }
            ],
            body="AnthropicMessagesRequest",
            ok=ok_response(
                "The message (`application/json`), or with `stream: true` "
                "Anthropic's Server-Sent Events.",
                body="AnthropicMessage",
                headers=headers,
                stream=sse_event(
                    {
                        **{
                            name: f"Anthropic's `{name}` object" for name in ANTHROPIC_STREAM_EVENTS
                        },
                        "error": f"`{ANTHROPIC_ERROR_ENVELOPE}`",
                    }
                ),
            ),
            errors=errors,
            samples=sdk_samples(
                "post",
                "/v1/messages",
                body=SCHEMAS["AnthropicMessagesRequest"]["example"],
                python=sdk_examples.PYTHON_ANTHROPIC,
                node=sdk_examples.NODE_ANTHROPIC,
                curl_key_header="x-api-key: $LLMWISE_API_KEY",
            ),
        )
    }


# URL path → its path item. Paths are as routed (no trailing slash), which is what SDKs call.
GATEWAY_PATHS: Final[dict[str, PathBuilder]] = {
    "/v1/chat/completions": _chat_completions,
    "/v1/models": _models,
    "/api/v1/chat": _native_chat,
    "/v1/messages": _anthropic_messages,
}

TAGS: Final = [
    {"name": TAG_OPENAI, "description": "Drop-in for the OpenAI API: change the base URL."},
    {"name": TAG_NATIVE, "description": "LLMWise's own format, with cost and routing."},
    {"name": TAG_ANTHROPIC, "description": "Drop-in for Anthropic's Messages API."},
]

# Request bodies for the examples of generated (DRF) operations whose schema has no example.
GENERATED_SAMPLE_BODIES: Final[dict[str, Any]] = {
    "/api/v1/routing/dry-run": {"prompt": "Translate good morning into French.", "model": "auto"},
}


def routed(path: str) -> bool:
    """Whether ``path`` is served by this deployment's URLconf."""
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def hand_written_paths(
    builders: Mapping[str, PathBuilder], *, existing: dict[str, Schema] | None = None
) -> dict[str, Schema]:
    """The path items of ``builders`` whose URL is routed, minus any operation already in
    ``existing`` (drf-spectacular's output)."""
    existing = existing or {}
    paths: dict[str, Schema] = {}
    for path, build in builders.items():
        if not routed(path):
            continue
        item = {
            method: operation_
            for method, operation_ in build().items()
            if method not in existing.get(path, {})
        }
        if item:
            paths[path] = item
    return paths


def gateway_paths(*, existing: dict[str, Schema] | None = None) -> dict[str, Schema]:
    """The hand-written path items of the routed gateway endpoints."""
    return hand_written_paths(GATEWAY_PATHS, existing=existing)


def _merge_components(kind: str, ours: dict[str, Schema], components: Schema) -> None:
    target = components.setdefault(kind, {})
    for name, value in ours.items():
        if name in target and target[name] != value:
            # A DRF serializer with the same component name would silently replace one of the
            # two; make it loud (``spectacular --fail-on-warn`` fails) instead.
            warn(f"OpenAPI component {kind}.{name} is defined twice; the gateway's is kept.")
        target[name] = copy.deepcopy(value)


def server_url(request: Any) -> str:
    """The base URL the schema (and its examples) name: this request's, else ``SITE_URL``."""
    server = request.build_absolute_uri("/") if request is not None else settings.SITE_URL
    return str(server).rstrip("/") or "/"


def hand_written_merge(
    result: Schema,
    *,
    builders: Mapping[str, PathBuilder],
    schemas: dict[str, Schema],
    tags: list[Schema],
    base_url: str,
) -> None:
    """Merge hand-written paths, their component schemas and tags into ``result`` (a
    drf-spectacular schema), and give every operation its examples."""
    paths: dict[str, Schema] = result.setdefault("paths", {})
    for path, item in hand_written_paths(builders, existing=paths).items():
        paths.setdefault(path, {}).update(item)
    result["paths"] = dict(sorted(paths.items()))
    _merge_components("schemas", schemas, result.setdefault("components", {}))
    known_tags = {tag["name"] for tag in result.get("tags", [])}
    result["tags"] = result.get("tags", []) + [t for t in tags if t["name"] not in known_tags]
    code_samples_add(result, base_url=base_url, bodies=GENERATED_SAMPLE_BODIES)


def gateway_paths_hook(
    result: Schema, generator: Any, request: Any, public: bool, **kwargs: Any
) -> Schema:
    """drf-spectacular postprocessing hook: add the gateway endpoints and their components."""
    server = server_url(request)
    hand_written_merge(result, builders=GATEWAY_PATHS, schemas=SCHEMAS, tags=TAGS, base_url=server)
    components: Schema = result["components"]
    _merge_components("headers", HEADERS, components)
    schemes = components.setdefault("securitySchemes", {})
    schemes.setdefault(
        ApiKeyAuthenticationScheme.name,
        ApiKeyAuthenticationScheme(None).get_security_definition(None),
    )
    schemes[API_KEY_HEADER_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same LLMWise API key in `x-api-key` (what the Anthropic SDK "
        "sends). Gateway endpoints only.",
    }

    info = result.setdefault("info", {})
    info["description"] = (info.get("description", "") + "\n\n" + OVERVIEW).strip()
    result.setdefault("servers", [{"url": server}])
    return result
