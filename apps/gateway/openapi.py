"""OpenAPI description of the gateway's own endpoints, added to drf-spectacular's schema.

The hot-path endpoints (``/v1/chat/completions``, ``/v1/models``, ``/api/v1/chat``,
``/v1/messages``) are plain async Django views, not DRF, so drf-spectacular cannot see them. This
module describes them by hand and :func:`gateway_paths_hook` (a ``POSTPROCESSING_HOOKS`` entry)
merges them into the generated schema served at ``/api/schema``.

Two rules keep the schema honest:

* an endpoint is described only when its URL is actually routed, so the schema never documents a
  path that answers 404 (the native and Anthropic endpoints appear as soon as they are wired);
* an operation drf-spectacular already generated (a DRF view with its own serializers) is kept as
  generated: the view's code is then the better source of truth.

Hand-written descriptions drift; ``tests/gateway/test_api_docs_live.py`` validates real answers of
each endpoint against these schemas, so a change to a response shape fails until this file follows.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from django.conf import settings
from django.urls import Resolver404, resolve
from drf_spectacular.drainage import warn

from apps.accounts.schema import ApiKeyAuthenticationScheme

Schema = dict[str, Any]

SCHEMAS_REF: Final = "#/components/schemas/"
HEADERS_REF: Final = "#/components/headers/"
ERROR_ENVELOPE: Final = "ErrorEnvelope"
ANTHROPIC_ERROR_ENVELOPE: Final = "AnthropicErrorEnvelope"
API_KEY_HEADER_SCHEME: Final = "ApiKeyHeader"

TAG_OPENAI: Final = "OpenAI-compatible"
TAG_NATIVE: Final = "Native"
TAG_ANTHROPIC: Final = "Anthropic-compatible"


def _ref(name: str) -> Schema:
    return {"$ref": SCHEMAS_REF + name}


def _header_ref(name: str) -> Schema:
    return {"$ref": HEADERS_REF + name}


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
""".strip()


# --- shared components ------------------------------------------------------------------------

HEADERS: Final[dict[str, Schema]] = {
    "RequestId": {
        "description": "This request's id: the client's own `x-request-id` when it sent a sane "
        "one (8 to 128 of `A-Za-z0-9._:-`), otherwise `req_<32 hex>`. Quote it to support; "
        "`GET /api/v1/requests/{request_id}` looks the call up.",
        "schema": {"type": "string", "example": "req_6f1c2b0e9d8a4c7b8e5f3a2d1c0b9a87"},
    },
    "LLMWiseModel": {
        "description": "The catalog id of the model that answered (after aliasing and routing).",
        "schema": {"type": "string", "example": "gpt-4o-mini"},
    },
    "LLMWiseCostMicros": {
        "description": "What this call was charged, in micro-USD (0 for BYOK calls). Absent on "
        "streamed responses, whose cost is known only at the end: read it from the final "
        "usage event instead.",
        "schema": {"type": "integer", "minimum": 0, "example": 42},
    },
    "LLMWiseOverheadMs": {
        "description": "Milliseconds spent in the gateway itself (auth, reserve, settle, log), "
        "the upstream call excluded. Absent on streamed responses.",
        "schema": {"type": "integer", "minimum": 0, "example": 2},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying (rate limits, overloaded upstreams).",
        "schema": {"type": "integer", "minimum": 1, "example": 7},
    },
    "AnthropicRequestId": {
        "description": "The request id again, where the Anthropic SDKs look for it.",
        "schema": {"type": "string", "example": "req_6f1c2b0e9d8a4c7b8e5f3a2d1c0b9a87"},
    },
    "WWWAuthenticate": {
        "description": "The expected scheme: `Bearer`.",
        "schema": {"type": "string", "example": 'Bearer realm="api"'},
    },
}

# The routing decision's fields, in every route (OpenAI/Anthropic `llmwise.route`, native `route`).
_ROUTE_DECISION: Final[Schema] = {
    "category": {"type": "string", "example": "qa"},
    "complexity": {"type": "string", "enum": ["low", "medium", "high"]},
    "tier": {"type": "string", "enum": ["budget", "standard", "frontier"]},
    "signals": {"type": "array", "items": {"type": "string"}},
    "chain": {"type": "array", "items": {"type": "string"}},
    "cache": {
        "type": "string",
        "enum": ["hit"],
        "description": "Answered from the organization's response cache (no attempts).",
    },
    "policy": {
        "type": "object",
        "description": "The routing policy the request ran under: name, version, "
        "rule_index, rule, source (request / api_key / org_default), excluded models.",
        "additionalProperties": True,
    },
}

_ROUTE: Final[Schema] = {
    "type": "object",
    "description": "How the request was routed: the model asked for, the model that answered, "
    "and why (`attempts` lists each model tried, when routing tried more than one). "
    'docs/routing.md, "How a request is routed", describes every field.',
    "properties": {
        "requested": {"type": "string", "example": "auto"},
        "chosen": {"type": "string", "nullable": True, "example": "gpt-4o-mini"},
        "reason": {
            "type": "string",
            "example": "qa, low complexity → budget tier: cheapest healthy model",
        },
        **_ROUTE_DECISION,
        "attempts": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": True},
        },
    },
    "required": ["requested", "chosen", "reason"],
}

_TEXT_PART: Final[Schema] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["text"]},
        "text": {"type": "string"},
    },
    "required": ["type", "text"],
}

SCHEMAS: Final[dict[str, Schema]] = {
    ERROR_ENVELOPE: {
        "type": "object",
        "description": "The one error shape of every API response that fails (OpenAI-shaped, "
        "so the SDKs raise typed errors from it).",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {
                        "type": "string",
                        "description": "What went wrong and what to do, safe to show.",
                        "example": "The model 'gpt-9' does not exist. GET /v1/models lists "
                        "the models.",
                    },
                    "type": {
                        "type": "string",
                        "description": "The error class: `invalid_request_error`, "
                        "`authentication_error`, `permission_error`, `not_found_error`, "
                        "`insufficient_credit`, `billing_error`, `rate_limit_error`, "
                        "`upstream_error`, `timeout_error`, `api_error`.",
                        "example": "not_found_error",
                    },
                    "code": {
                        "type": "string",
                        "description": "A stable code to branch on, e.g. `invalid_api_key`, "
                        "`invalid_request`, `model_not_found`, `model_not_allowed`, "
                        "`max_tokens_too_large`, `insufficient_credit`, `request_too_large`, "
                        "`upstream_rate_limited`, `upstream_overloaded`, "
                        "`upstream_server_error`, `upstream_timeout`, "
                        "`upstream_invalid_response`, `context_length_exceeded`.",
                        "example": "model_not_found",
                    },
                    "param": {
                        "type": "string",
                        "nullable": True,
                        "description": "The request field at fault (dotted path), if any.",
                        "example": "model",
                    },
                    "provider": {
                        "type": "string",
                        "nullable": True,
                        "description": "The upstream provider that failed, for upstream errors.",
                    },
                    "request_id": {
                        "type": "string",
                        "description": "Same as the `x-request-id` header.",
                        "example": "req_6f1c2b0e9d8a4c7b8e5f3a2d1c0b9a87",
                    },
                },
                "required": ["message", "type", "code", "param", "provider", "request_id"],
            }
        },
        "required": ["error"],
    },
    # --- OpenAI-compatible ---
    "ChatCompletionMessage": {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": _TEXT_PART, "minItems": 1},
                ],
                "description": "A string, or a list of text parts (joined). Only text is "
                "supported; image and audio parts answer 400.",
            },
            "name": {"type": "string", "description": "Accepted, not forwarded."},
        },
        "required": ["role", "content"],
    },
    "ChatCompletionRequest": {
        "type": "object",
        "description": "OpenAI's chat-completions body. Parameters not listed here are not "
        "forwarded to the provider.",
        "properties": {
            "model": {
                "type": "string",
                "description": "A catalog model id or alias (`GET /v1/models`).",
                "example": "gpt-4o-mini",
            },
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": _ref("ChatCompletionMessage"),
            },
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Cap on generated tokens; the hold on your wallet is sized to "
                "it. Defaults to the model's catalog default; above the model's maximum "
                "answers 400 `max_tokens_too_large`.",
            },
            "max_completion_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "OpenAI's newer name for `max_tokens`; wins when both are sent.",
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "maxItems": 4,
                    },
                ],
                "description": "Up to 4 stop sequences.",
            },
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "Answer as Server-Sent Events (`text/event-stream`): "
                "`chat.completion.chunk` objects, then `data: [DONE]`.",
            },
            "stream_options": {
                "type": "object",
                "properties": {
                    "include_usage": {
                        "type": "boolean",
                        "default": False,
                        "description": "Send one last chunk with `choices: []`, `usage` and "
                        "`llmwise` (cost, route) before `[DONE]`.",
                    }
                },
            },
            "user": {"type": "string", "description": "Your end-user id, passed upstream."},
            "fallbacks": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 4,
                "description": "Models tried in order after `model` on a retryable upstream "
                "failure, before any output (docs/routing.md). Unknown ids are a 404.",
            },
            "mesh": {
                "type": "boolean",
                "default": False,
                "description": "Without `fallbacks`: fail over to the default alternatives of "
                "the model's tier.",
            },
            "policy": {
                "type": "string",
                "description": "Run under this routing policy of your organization (else the "
                "key's pinned policy, else the organization's default). Unknown: 404 "
                "`policy_not_found`.",
            },
        },
        "required": ["model", "messages"],
        "example": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "Why is the sky blue?"},
            ],
            "max_tokens": 200,
        },
    },
    "ChatCompletionUsage": {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
            "prompt_tokens_details": {
                "type": "object",
                "properties": {
                    "cached_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Part of `prompt_tokens` served from the provider's "
                        "prompt cache.",
                    }
                },
            },
            "completion_tokens_details": {
                "type": "object",
                "properties": {
                    "reasoning_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Part of `completion_tokens` spent reasoning.",
                    }
                },
            },
        },
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    },
    "LLMWiseCallInfo": {
        "type": "object",
        "description": "LLMWise's additions to an OpenAI response (SDKs ignore unknown fields; "
        "read them from the raw JSON or `model_extra`).",
        "properties": {
            "cost_micros": {
                "type": "integer",
                "minimum": 0,
                "description": "What the call costs at catalog prices, in micro-USD (for a "
                "BYOK call: what it would have cost).",
            },
            "charged_micros": {
                "type": "integer",
                "minimum": 0,
                "description": "What left your wallet, in micro-USD (0 for BYOK calls).",
            },
            "byok": {
                "type": "boolean",
                "description": "The call used your organization's own provider key.",
            },
            "latency_ms": {
                "type": "integer",
                "minimum": 0,
                "description": "Whole call as the gateway saw it (absent on stream chunks).",
            },
            "route": _ROUTE,
            "usage_estimated": {
                "type": "boolean",
                "description": "True when the provider reported no usage and the gateway "
                "counted the tokens itself.",
            },
        },
        "required": ["cost_micros", "charged_micros", "byok", "route", "usage_estimated"],
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": {
                "type": "string",
                "description": "`chatcmpl-` + the request id.",
                "example": "chatcmpl-req_6f1c2b0e9d8a4c7b8e5f3a2d1c0b9a87",
            },
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer", "description": "Unix seconds."},
            "model": {"type": "string", "description": "The model that answered."},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": ["assistant"]},
                                "content": {"type": "string"},
                            },
                            "required": ["role", "content"],
                        },
                        "finish_reason": _ref("FinishReason"),
                        "logprobs": {"type": "object", "nullable": True},
                    },
                    "required": ["index", "message", "finish_reason"],
                },
            },
            "usage": _ref("ChatCompletionUsage"),
            "llmwise": _ref("LLMWiseCallInfo"),
        },
        "required": ["id", "object", "created", "model", "choices", "usage", "llmwise"],
    },
    "FinishReason": {
        "type": "string",
        "enum": ["stop", "length", "content_filter", "tool_calls", "error"],
        "description": "Every provider's stop reason mapped onto OpenAI's values.",
    },
    "ChatCompletionChunk": {
        "type": "object",
        "description": "One SSE `data:` line of a streamed chat completion.",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "description": "One choice; empty in the final usage chunk.",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "delta": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": ["assistant"]},
                                "content": {"type": "string"},
                            },
                        },
                        "finish_reason": {
                            "allOf": [_ref("FinishReason")],
                            "nullable": True,
                        },
                        "logprobs": {"type": "object", "nullable": True},
                    },
                    "required": ["index", "delta", "finish_reason"],
                },
            },
            "usage": _ref("ChatCompletionUsage"),
            "llmwise": _ref("LLMWiseCallInfo"),
        },
        "required": ["id", "object", "created", "model", "choices"],
    },
    "Model": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "example": "claude-sonnet-4.5"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {
                "type": "string",
                "description": "The provider serving it.",
                "example": "anthropic",
            },
        },
        "required": ["id", "object", "created", "owned_by"],
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
        "required": ["object", "data"],
    },
    # --- native (apps/gateway/native_api.py) ---
    "NativeChatRequest": {
        "type": "object",
        "description": "LLMWise's own chat format. Stricter than the OpenAI one: unknown fields "
        "(a typo such as `max_token`) answer 400 `unknown_parameter` instead of being ignored.",
        "properties": {
            "model": {
                "type": "string",
                "description": "A catalog model id or alias, or `auto`: the auto-router picks "
                "the cheapest model that fits the task (the `route` explains the choice).",
                "example": "gpt-4o-mini",
            },
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                    },
                    "required": ["role", "content"],
                    "additionalProperties": False,
                },
            },
            "stream": {"type": "boolean", "default": False},
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Defaults to the model's catalog default; the wallet hold is "
                "sized to it.",
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "maxItems": 4,
                    },
                ]
            },
            "user": {"type": "string", "description": "Your end-user id, passed upstream."},
            "fallbacks": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 4,
                "description": "Models tried in order after `model` on a retryable upstream "
                "failure, before any output (docs/routing.md). Unknown ids are a 404.",
            },
            "mesh": {
                "type": "boolean",
                "default": False,
                "description": "Without `fallbacks`: fail over to the default alternatives of "
                "the model's tier.",
            },
            "policy": {
                "type": "string",
                "description": "Run under this routing policy of your organization (else the "
                "key's pinned policy, else the organization's default). Unknown: 404 "
                "`policy_not_found`.",
            },
        },
        "required": ["model", "messages"],
        "additionalProperties": False,
        "example": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Summarise: the cat sat on the mat."}],
            "max_tokens": 100,
        },
    },
    "NativeUsage": {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
            "cached_tokens": {"type": "integer", "minimum": 0},
            "reasoning_tokens": {"type": "integer", "minimum": 0},
            "estimated": {
                "type": "boolean",
                "description": "True when the provider reported no usage and the gateway "
                "counted the tokens itself.",
            },
        },
        "required": [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "estimated",
        ],
    },
    "NativeCost": {
        "type": "object",
        "properties": {
            "micros": {"type": "integer", "minimum": 0, "description": "Micro-USD."},
            "usd": {
                "type": "string",
                "description": "The same amount as an exact decimal string (never a float).",
                "example": "0.000042",
            },
            "charged": {
                "type": "boolean",
                "description": "False for BYOK calls: logged at their would-be cost, not charged.",
            },
        },
        "required": ["micros", "usd", "charged"],
    },
    "NativeRoute": {
        "type": "object",
        "description": "The route taken: the model asked for, the one that answered, why, and "
        "every model tried (one entry without failover).",
        "properties": {
            "requested": {"type": "string", "nullable": True},
            "chosen": {"type": "string"},
            "reason": {"type": "string", "example": "requested"},
            **_ROUTE_DECISION,
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "provider": {"type": "string"},
                        "status": {
                            "type": "string",
                            "enum": ["ok", "error", "skipped"],
                            "example": "ok",
                        },
                        "error_code": {"type": "string", "example": ""},
                        "latency_ms": {"type": "integer"},
                    },
                },
            },
        },
        "required": ["requested", "chosen", "reason", "attempts"],
    },
    "NativeChatResult": {
        "type": "object",
        "description": "The answer with everything needed to reconcile it.",
        "properties": {
            "id": {"type": "string", "description": "The request id (`x-request-id`)."},
            "object": {"type": "string", "enum": ["chat.result"]},
            "model": {"type": "string", "description": "The model that answered."},
            "content": {"type": "string", "description": "The answer's text."},
            "finish_reason": _ref("FinishReason"),
            "usage": _ref("NativeUsage"),
            "cost": _ref("NativeCost"),
            "latency_ms": {"type": "integer", "minimum": 0},
            "route": _ref("NativeRoute"),
        },
        "required": [
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
    },
    "NativeDeltaEvent": {
        "type": "object",
        "description": "`event: delta`: the next piece of the answer's text.",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    "NativeDoneEvent": {
        "type": "object",
        "description": "`event: done`: the last event of a stream that completed.",
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "finish_reason": _ref("FinishReason"),
            "usage": _ref("NativeUsage"),
            "cost": _ref("NativeCost"),
            "route": _ref("NativeRoute"),
            "latency_ms": {"type": "integer", "minimum": 0},
        },
        "required": ["id", "model", "finish_reason", "usage", "cost", "route", "latency_ms"],
    },
    # --- Anthropic-compatible (apps/gateway/anthropic_api.py) ---
    "AnthropicMessagesRequest": {
        "type": "object",
        "description": "Anthropic's Messages body, translated onto the same core (any catalog "
        "model answers it, not only Claude). Fields Anthropic knows but LLMWise does not "
        "support here (tools, thinking, top_k, ...) answer 400 `unsupported_parameter` rather "
        "than being dropped.",
        "properties": {
            "model": {"type": "string", "example": "claude-haiku-4.5"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": _TEXT_PART},
                            ]
                        },
                    },
                    "required": ["role", "content"],
                },
            },
            "system": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}],
            },
            "stream": {"type": "boolean", "default": False},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop_sequences": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "maxItems": 4,
            },
            "metadata": {
                "type": "object",
                "properties": {
                    "user_id": {"type": "string", "description": "Passed upstream as the user."}
                },
            },
        },
        "required": ["model", "max_tokens", "messages"],
        "additionalProperties": False,
        "example": {
            "model": "claude-haiku-4.5",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    },
    "AnthropicMessage": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "`msg_` + the request id."},
            "type": {"type": "string", "enum": ["message"]},
            "role": {"type": "string", "enum": ["assistant"]},
            "model": {"type": "string", "description": "The model that answered."},
            "content": {"type": "array", "items": _TEXT_PART},
            "stop_reason": {
                "type": "string",
                "enum": ["end_turn", "max_tokens", "tool_use", "refusal"],
            },
            "stop_sequence": {
                "type": "string",
                "nullable": True,
                "description": "Always null: which stop sequence ended the call is not known.",
            },
            "usage": {
                "type": "object",
                "properties": {
                    "input_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Prompt tokens not read from the cache.",
                    },
                    "output_tokens": {"type": "integer", "minimum": 0},
                    "cache_read_input_tokens": {"type": "integer", "minimum": 0},
                    "cache_creation_input_tokens": {"type": "integer", "minimum": 0},
                },
                "required": ["input_tokens", "output_tokens"],
            },
            "llmwise": _ref("LLMWiseCallInfo"),
        },
        "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    },
    ANTHROPIC_ERROR_ENVELOPE: {
        "type": "object",
        "description": "Errors of the Anthropic-compatible endpoint only: Anthropic's own shape, "
        "so its SDKs raise their usual exceptions. `code`, `param` and `provider` mean what "
        "they mean in `ErrorEnvelope`.",
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "description": "Anthropic's error type for the status: "
                        "`invalid_request_error`, `authentication_error`, `billing_error`, "
                        "`permission_error`, `not_found_error`, `request_too_large`, "
                        "`rate_limit_error`, `timeout_error`, `overloaded_error`, `api_error`.",
                    },
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "provider": {"type": "string", "nullable": True},
                },
                "required": ["type", "message", "code", "param", "provider"],
            },
            "request_id": {"type": "string"},
        },
        "required": ["type", "error", "request_id"],
    },
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


def _error_responses(
    statuses: tuple[int, ...], *, envelope: str = ERROR_ENVELOPE
) -> dict[str, Schema]:
    responses: dict[str, Schema] = {}
    for status in statuses:
        headers: dict[str, Schema] = {"x-request-id": _header_ref("RequestId")}
        if status in RETRY_AFTER_STATUSES:
            headers["Retry-After"] = _header_ref("RetryAfter")
        if status == 401:
            headers["WWW-Authenticate"] = _header_ref("WWWAuthenticate")
        responses[str(status)] = {
            "description": ERROR_MEANINGS[status],
            "headers": headers,
            "content": {"application/json": {"schema": _ref(envelope)}},
        }
    return responses


def _success_headers() -> dict[str, Schema]:
    return {
        "x-request-id": _header_ref("RequestId"),
        "x-llmwise-model": _header_ref("LLMWiseModel"),
        "x-llmwise-cost-micros": _header_ref("LLMWiseCostMicros"),
        "x-llmwise-overhead-ms": _header_ref("LLMWiseOverheadMs"),
    }


def _security() -> list[Schema]:
    return [{ApiKeyAuthenticationScheme.name: []}, {API_KEY_HEADER_SCHEME: []}]


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

OPENAI_STREAM_EXAMPLE: Final = (
    'data: {"id":"chatcmpl-req_1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"chatcmpl-req_1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"},'
    '"finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"chatcmpl-req_1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop",'
    '"logprobs":null}]}\n\n'
    'data: {"id":"chatcmpl-req_1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,'
    '"total_tokens":10},"llmwise":{"cost_micros":2,"charged_micros":2,"byok":false,'
    '"route":{"requested":"gpt-4o-mini","chosen":"gpt-4o-mini","reason":"requested"},'
    '"usage_estimated":false}}\n\n'
    "data: [DONE]\n\n"
)


def _chat_completions() -> Schema:
    return {
        "post": {
            "operationId": "openai_chat_completions_create",
            "tags": [TAG_OPENAI],
            "summary": "Create a chat completion (OpenAI-compatible)",
            "description": "OpenAI's `POST /v1/chat/completions`, answered by any catalog model. "
            "The official `openai` SDKs work unchanged with `base_url=<this server>/v1`.\n\n"
            + OPENAI_STREAM_DESCRIPTION,
            "security": _security(),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The completion (`application/json`), or with `stream: true` "
                    "its Server-Sent Events (`text/event-stream`), one `ChatCompletionChunk` "
                    "per `data:` line. Streamed answers carry `x-request-id` and "
                    "`x-llmwise-model` only.",
                    "headers": _success_headers(),
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {
                            "schema": _ref("ChatCompletionChunk"),
                            "example": OPENAI_STREAM_EXAMPLE,
                        },
                    },
                },
                **_error_responses(CALL_ERRORS),
            },
        }
    }


def _models() -> Schema:
    return {
        "get": {
            "operationId": "openai_models_list",
            "tags": [TAG_OPENAI],
            "summary": "List models (OpenAI-compatible)",
            "description": "The enabled catalog models this API key may use (all of them unless "
            "the key is restricted to a list).",
            "security": _security(),
            "responses": {
                "200": {
                    "description": "The models.",
                    "headers": {"x-request-id": _header_ref("RequestId")},
                    "content": {"application/json": {"schema": _ref("ModelList")}},
                },
                **_error_responses(LIST_ERRORS),
            },
        }
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
        "post": {
            "operationId": "native_chat_create",
            "tags": [TAG_NATIVE],
            "summary": "Chat (native format, with cost and route)",
            "description": "LLMWise's own endpoint: the answer carries the model used, finish "
            "reason, usage, cost, latency and the route taken.\n\n" + NATIVE_STREAM_DESCRIPTION,
            "security": _security(),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("NativeChatRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The result (`application/json`), or with `stream: true` "
                    "its Server-Sent Events, whose `data:` is one of the schemas shown. "
                    "Streamed answers carry `x-request-id` and `x-llmwise-model` only.",
                    "headers": _success_headers(),
                    "content": {
                        "application/json": {"schema": _ref("NativeChatResult")},
                        "text/event-stream": {
                            "schema": {
                                "oneOf": [
                                    _ref("NativeDeltaEvent"),
                                    _ref("NativeDoneEvent"),
                                    _ref(ERROR_ENVELOPE),
                                ]
                            },
                            "example": NATIVE_STREAM_EXAMPLE,
                        },
                    },
                },
                **_error_responses(CALL_ERRORS),
            },
        }
    }


ANTHROPIC_STREAM_DESCRIPTION: Final = """
With `"stream": true` the answer is Anthropic's event stream for one text block:
`message_start` (input tokens estimated), `content_block_start`, `ping`, `content_block_delta`
(`text_delta`) per piece of text, `content_block_stop`, `message_delta` (`stop_reason` and the
real cumulative `usage`), `message_stop`. A failure after the start ends the stream with one
`error` event carrying the `AnthropicErrorEnvelope`.
""".strip()


def _anthropic_messages() -> Schema:
    headers = {**_success_headers(), "request-id": _header_ref("AnthropicRequestId")}
    errors = _error_responses(ANTHROPIC_CALL_ERRORS, envelope=ANTHROPIC_ERROR_ENVELOPE)
    for response in errors.values():
        response["headers"]["request-id"] = _header_ref("AnthropicRequestId")
        response["headers"].pop("WWW-Authenticate", None)  # Anthropic's 401 sends none
    return {
        "post": {
            "operationId": "anthropic_messages_create",
            "tags": [TAG_ANTHROPIC],
            "summary": "Create a message (Anthropic-compatible)",
            "description": "Anthropic's `POST /v1/messages`, so the `anthropic` SDKs work with "
            "`base_url=<this server>` (they send the key as `x-api-key`; `Authorization: "
            "Bearer` works too). Answers, streams and errors come back in Anthropic's own "
            "shapes, with LLMWise's cost and route under `llmwise`.\n\n"
            + ANTHROPIC_STREAM_DESCRIPTION,
            "security": _security(),
            "parameters": [
                {
                    "name": "anthropic-version",
                    "in": "header",
                    "required": False,
                    "description": "Sent by the Anthropic SDKs; accepted and not needed.",
                    "schema": {"type": "string", "example": "2023-06-01"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("AnthropicMessagesRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The message (`application/json`), or with `stream: true` "
                    "Anthropic's Server-Sent Events.",
                    "headers": headers,
                    "content": {
                        "application/json": {"schema": _ref("AnthropicMessage")},
                        "text/event-stream": {
                            "schema": {
                                "type": "string",
                                "description": "Anthropic's event stream (see above).",
                            }
                        },
                    },
                },
                **errors,
            },
        }
    }


# URL path → its path item. Paths are as routed (no trailing slash), which is what SDKs call.
GATEWAY_PATHS: Final = {
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


def routed(path: str) -> bool:
    """Whether ``path`` is served by this deployment's URLconf."""
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def gateway_paths(*, existing: dict[str, Schema] | None = None) -> dict[str, Schema]:
    """The hand-written path items of the routed gateway endpoints, minus any operation already
    in ``existing`` (drf-spectacular's output)."""
    existing = existing or {}
    paths: dict[str, Schema] = {}
    for path, build in GATEWAY_PATHS.items():
        if not routed(path):
            continue
        item = {
            method: operation
            for method, operation in build().items()
            if method not in existing.get(path, {})
        }
        if item:
            paths[path] = item
    return paths


def _merge_components(kind: str, ours: dict[str, Schema], components: Schema) -> None:
    target = components.setdefault(kind, {})
    for name, value in ours.items():
        if name in target and target[name] != value:
            # A DRF serializer with the same component name would silently replace one of the
            # two; make it loud (``spectacular --fail-on-warn`` fails) instead.
            warn(f"OpenAPI component {kind}.{name} is defined twice; the gateway's is kept.")
        target[name] = copy.deepcopy(value)


def gateway_paths_hook(
    result: Schema, generator: Any, request: Any, public: bool, **kwargs: Any
) -> Schema:
    """drf-spectacular postprocessing hook: add the gateway endpoints and their components."""
    paths: dict[str, Schema] = result.setdefault("paths", {})
    for path, item in gateway_paths(existing=paths).items():
        paths.setdefault(path, {}).update(item)
    result["paths"] = dict(sorted(paths.items()))

    components: Schema = result.setdefault("components", {})
    _merge_components("schemas", SCHEMAS, components)
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
    known_tags = {tag["name"] for tag in result.get("tags", [])}
    result["tags"] = result.get("tags", []) + [t for t in TAGS if t["name"] not in known_tags]
    server = request.build_absolute_uri("/") if request is not None else settings.SITE_URL
    result.setdefault("servers", [{"url": server.rstrip("/") or "/"}])
    return result
