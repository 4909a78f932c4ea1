"""The OpenAI Chat Completions wire, with the variants of OpenRouter and the compatible family.

Variants are flags on :class:`OpenAIWire`, mirroring what the real hosts do differently: error body
shapes, where stream usage appears, which fields they refuse (providers.md §1, §4, §5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .faults import Fault
from .text import Answer, Prompt
from .wire import INVALID_KEY_PREFIX, BadRequest, Call, Reply, Wire, json_reply, next_id, sse

CONTEXT_WINDOW = 128_000
KEEPALIVE_COMMENT = b": OPENROUTER PROCESSING\n\n"
FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class OpenAIFlavor:
    # "openai": {"error": {message,type,param,code}}; "openrouter": {"error": {code:int,message}};
    # "flat": {"object":"error","message",...} (Mistral).
    error_shape: str = "openai"
    keepalive_comments: bool = False
    usage_always_in_final_chunk: bool = False  # Mistral, Together: without being asked
    usage_vendor_field: str | None = None  # Groq: x_groq.usage on the final chunk
    cache_fields_vendor: bool = False  # DeepSeek: prompt_cache_hit_tokens / miss
    # Fields the host refuses with a 422 (Mistral validates strictly).
    forbidden_fields: frozenset[str] = frozenset()


FLAVORS: dict[str, OpenAIFlavor] = {
    "openai": OpenAIFlavor(),
    "openrouter": OpenAIFlavor(error_shape="openrouter", keepalive_comments=True),
    "mistral": OpenAIFlavor(
        error_shape="flat",
        usage_always_in_final_chunk=True,
        forbidden_fields=frozenset(
            {"stream_options", "user", "max_completion_tokens", "seed", "logit_bias"}
        ),
    ),
    "groq": OpenAIFlavor(usage_vendor_field="x_groq"),
    "deepseek": OpenAIFlavor(cache_fields_vendor=True),
    "xai": OpenAIFlavor(),
    "together": OpenAIFlavor(usage_always_in_final_chunk=True),
}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content is None:
        return ""
    raise BadRequest("messages[].content must be a string or a list of parts")


class OpenAIWire(Wire):
    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.flavor = FLAVORS[provider]

    def route(self, call: Call) -> str | None:
        if call.method == "POST" and call.path.endswith("/chat/completions"):
            return "chat"
        if call.method == "GET" and call.path.endswith("/models"):
            return "models"
        return None

    # --- errors in this host's shape ------------------------------------------------------------
    def _error(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        code: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Reply:
        shape = self.flavor.error_shape
        body: dict[str, Any]
        if shape == "openrouter":
            error: dict[str, Any] = {"code": status, "message": message}
            if metadata:
                error["metadata"] = metadata
            body = {"error": error}
        elif shape == "flat":
            body = {
                "object": "error",
                "message": message,
                "type": kind,
                "param": None,
                "code": code,
            }
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return json_reply(status, body, headers)

    def auth_error(self, call: Call) -> Reply | None:
        key = call.bearer()
        if key is None:
            if self.flavor.error_shape == "openrouter":
                return self._error(401, "No auth credentials found", kind="auth")
            if self.flavor.error_shape == "flat":
                return json_reply(401, {"message": "Unauthorized", "request_id": next_id("")})
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                kind="invalid_request_error",
            )
        if key.startswith(INVALID_KEY_PREFIX):
            if self.flavor.error_shape == "openrouter":
                return self._error(401, "User not found.", kind="auth")
            if self.flavor.error_shape == "flat":
                return json_reply(401, {"message": "Unauthorized", "request_id": next_id("")})
            return self._error(
                401,
                f"Incorrect API key provided: {key[:8]}****. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                kind="invalid_request_error",
                code="invalid_api_key",
            )
        return None

    def bad_request(self, message: str) -> Reply:
        if self.flavor.error_shape == "flat":  # Mistral: 422 with pydantic's detail as message
            detail = {"detail": [{"type": "extra_forbidden", "loc": ["body"], "msg": message}]}
            return json_reply(
                422,
                {
                    "object": "error",
                    "message": detail,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                },
            )
        return self._error(400, message, kind="invalid_request_error")

    def not_found(self, message: str) -> Reply:
        return self._error(404, message, kind="invalid_request_error", code="model_not_found")

    def fault_reply(self, fault: Fault, *, call: Call, prompt: Prompt, retry_after: int) -> Reply:
        wait = [("retry-after", str(retry_after))]
        router = self.flavor.error_shape == "openrouter"
        if fault == Fault.HTTP_400:
            return self._error(
                400,
                f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your "
                f"messages resulted in {CONTEXT_WINDOW + 1} tokens. Please reduce the length.",
                kind="invalid_request_error",
                code="context_length_exceeded",
            )
        if fault == Fault.HTTP_401:
            return self._error(
                401,
                "Incorrect API key provided.",
                kind="invalid_request_error",
                code="invalid_api_key",
            )
        if fault in (Fault.HTTP_429, Fault.RESOURCE_EXHAUSTED):
            return self._error(
                429,
                f"Rate limit reached for {prompt.model} on requests per min (RPM): Limit 500. "
                f"Please try again in {retry_after}s.",
                kind="requests",
                code="rate_limit_exceeded",
                headers=wait,
            )
        if fault == Fault.INSUFFICIENT_QUOTA:
            if router:
                return self._error(402, "Insufficient credits. Add more using /credits.", kind="")
            return self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                kind="insufficient_quota",
                code="insufficient_quota",
            )
        if fault == Fault.CONTENT_POLICY:
            if router:
                return self._error(
                    403,
                    f"{prompt.model} requires moderation on OpenRouter. Your input was flagged "
                    'for "violence".',
                    kind="",
                    metadata={
                        "reasons": ["violence"],
                        "flagged_input": "...",
                        "provider_name": "x",
                    },
                )
            return self._error(
                400,
                "Your request was rejected as a result of our safety system.",
                kind="invalid_request_error",
                code="content_policy_violation",
            )
        if fault == Fault.HTTP_500:
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                kind="server_error",
            )
        # HTTP_503, UNAVAILABLE, OVERLOADED_529: OpenAI-shaped hosts say 503.
        return self._error(
            503,
            "The engine is currently overloaded, please try again later.",
            kind="server_error",
            headers=wait,
        )

    # --- requests -------------------------------------------------------------------------------
    def parse(self, call: Call) -> Prompt:
        body = call.body
        if not isinstance(body, dict):
            raise BadRequest("We could not parse the JSON body of your request.")
        forbidden = self.flavor.forbidden_fields.intersection(body)
        if forbidden:
            raise BadRequest(f"Extra inputs are not permitted: {sorted(forbidden)[0]}")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("[] is too short - 'messages'")
        texts: list[tuple[str, str]] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("Invalid value for 'messages': each needs a role")
            texts.append((message["role"], _content_text(message.get("content"))))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest("max_tokens must be a positive integer")
        options = body.get("stream_options")
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        call.model = model
        return Prompt(
            model=model,
            texts=texts,
            max_tokens=max_tokens,
            stream=bool(body.get("stream")),
            include_usage=include_usage,
        )

    # --- responses ------------------------------------------------------------------------------
    def _usage(self, answer: Answer) -> dict[str, Any]:
        completion = answer.completion_tokens + answer.reasoning_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": answer.prompt_tokens + completion,
        }
        if self.flavor.cache_fields_vendor:
            usage["prompt_cache_hit_tokens"] = answer.cached_tokens
            usage["prompt_cache_miss_tokens"] = answer.prompt_tokens - answer.cached_tokens
        else:
            usage["prompt_tokens_details"] = {"cached_tokens": answer.cached_tokens}
        usage["completion_tokens_details"] = {"reasoning_tokens": answer.reasoning_tokens}
        return usage

    def _response_id(self, call: Call) -> str:
        rid = call.headers.get("x-sandbox-response-id")
        if rid is None:
            rid = next_id("chatcmpl-" if self.provider != "openrouter" else "gen-")
            call.headers["x-sandbox-response-id"] = rid
        return rid

    def completion(self, *, call: Call, prompt: Prompt, answer: Answer, finish: str) -> Reply:
        body: dict[str, Any] = {
            "id": self._response_id(call),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prompt.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": FINISH[finish],
                }
            ],
            "usage": self._usage(answer),
            "system_fingerprint": "fp_sandbox",
        }
        if self.provider == "openrouter":
            body["provider"] = "Sandbox"
        return json_reply(200, body, [("x-request-id", next_id("req_"))])

    def _chunk(
        self, call: Call, prompt: Prompt, delta: dict[str, Any], finish: str | None
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._response_id(call),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": prompt.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if prompt.include_usage:
            chunk["usage"] = None
        return chunk

    def stream_head(self, *, call: Call, prompt: Prompt, answer: Answer) -> list[bytes]:
        head = [KEEPALIVE_COMMENT] if self.flavor.keepalive_comments else []
        head.append(sse(self._chunk(call, prompt, {"role": "assistant", "content": ""}, None)))
        return head

    def stream_delta(self, *, call: Call, prompt: Prompt, answer: Answer, text: str) -> bytes:
        return sse(self._chunk(call, prompt, {"content": text}, None))

    def stream_tail(
        self, *, call: Call, prompt: Prompt, answer: Answer, finish: str, with_usage: bool
    ) -> list[bytes]:
        final = self._chunk(call, prompt, {}, FINISH[finish])
        tail = []
        if with_usage and self.flavor.usage_always_in_final_chunk:
            final["usage"] = self._usage(answer)
        if with_usage and self.flavor.usage_vendor_field:
            final[self.flavor.usage_vendor_field] = {"id": "req_x", "usage": self._usage(answer)}
        tail.append(sse(final))
        if with_usage and prompt.include_usage:
            usage_chunk = self._chunk(call, prompt, {}, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self._usage(answer)
            tail.append(sse(usage_chunk))
        tail.append(b"data: [DONE]\n\n")
        return tail

    def stream_error(self, *, call: Call) -> bytes:
        if self.flavor.error_shape == "openrouter":
            return sse(
                {
                    "id": self._response_id(call),
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": call.model,
                    "provider": "Sandbox",
                    "error": {"code": 502, "message": "Upstream provider returned an error"},
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                }
            )
        return sse(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )

    def models(self, *, call: Call) -> Reply:
        names = ["gpt-5", "gpt-5-mini", "gpt-4o", "gpt-4o-mini"]
        return json_reply(
            200,
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": self.provider}
                    for name in names
                ],
            },
        )
