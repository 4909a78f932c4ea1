"""The Anthropic Messages wire (providers.md §2): named SSE events, 529 overloaded."""

from __future__ import annotations

from typing import Any

from .faults import Fault
from .text import Answer, Prompt
from .wire import INVALID_KEY_PREFIX, BadRequest, Call, Reply, Wire, json_reply, next_id, sse

API_VERSION = "2023-06-01"
CONTEXT_WINDOW = 200_000
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}


def _blocks_text(content: Any, what: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    raise BadRequest(f"{what}: Input should be a valid string or list of content blocks")


class AnthropicWire(Wire):
    def route(self, call: Call) -> str | None:
        if call.method == "POST" and call.path == "/v1/messages":
            return "chat"
        if call.method == "GET" and call.path == "/v1/models":
            return "models"
        return None

    def _error(
        self, status: int, kind: str, message: str, headers: list[tuple[str, str]] | None = None
    ) -> Reply:
        request_id = next_id("req_")
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }
        return json_reply(status, body, [("request-id", request_id), *(headers or [])])

    def auth_error(self, call: Call) -> Reply | None:
        key = call.headers.get("x-api-key")
        if not key:
            return self._error(401, "authentication_error", "x-api-key header is required")
        if key.startswith(INVALID_KEY_PREFIX):
            return self._error(401, "authentication_error", "invalid x-api-key")
        return None

    def bad_request(self, message: str) -> Reply:
        return self._error(400, "invalid_request_error", message)

    def not_found(self, message: str) -> Reply:
        return self._error(404, "not_found_error", message)

    def fault_reply(self, fault: Fault, *, call: Call, prompt: Prompt, retry_after: int) -> Reply:
        wait = [("retry-after", str(retry_after))]
        if fault == Fault.HTTP_400:
            return self._error(
                400,
                "invalid_request_error",
                f"prompt is too long: {CONTEXT_WINDOW + 1} tokens > {CONTEXT_WINDOW} maximum",
            )
        if fault == Fault.HTTP_401:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if fault in (Fault.HTTP_429, Fault.RESOURCE_EXHAUSTED):
            return self._error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests "
                "per minute.",
                wait,
            )
        if fault == Fault.INSUFFICIENT_QUOTA:
            return self._error(
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans "
                "& Billing to upgrade or purchase credits.",
            )
        if fault == Fault.CONTENT_POLICY:
            return self._error(
                400, "invalid_request_error", "Output blocked by content filtering policy"
            )
        if fault == Fault.HTTP_500:
            return self._error(500, "api_error", "Internal server error")
        if fault == Fault.HTTP_503:
            return self._error(503, "api_error", "Service unavailable", wait)
        return self._error(529, "overloaded_error", "Overloaded")  # OVERLOADED_529, UNAVAILABLE

    def parse(self, call: Call) -> Prompt:
        if call.headers.get("anthropic-version") is None:
            raise BadRequest("anthropic-version: header is required")
        body = call.body
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        texts: list[tuple[str, str]] = []
        if body.get("system") is not None:
            texts.append(("system", _blocks_text(body["system"], "system")))
        previous = None
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                raise BadRequest(f"messages.{index}.role: Input should be 'user' or 'assistant'")
            if role == previous:
                raise BadRequest('messages: roles must alternate between "user" and "assistant"')
            previous = role
            texts.append((role, _blocks_text(message.get("content"), f"messages.{index}.content")))
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= temperature <= 1:
            raise BadRequest("temperature: range: 0..1")
        call.model = model
        return Prompt(
            model=model, texts=texts, max_tokens=max_tokens, stream=bool(body.get("stream"))
        )

    def _usage(self, answer: Answer, *, output: int) -> dict[str, Any]:
        return {
            "input_tokens": answer.prompt_tokens - answer.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": answer.cached_tokens,
            "output_tokens": output,
        }

    def _message(self, call: Call, prompt: Prompt) -> dict[str, Any]:
        message_id = call.headers.get("x-sandbox-response-id")
        if message_id is None:
            message_id = call.headers["x-sandbox-response-id"] = next_id("msg_")
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }

    def completion(self, *, call: Call, prompt: Prompt, answer: Answer, finish: str) -> Reply:
        body = self._message(call, prompt)
        body["content"] = [{"type": "text", "text": answer.text}]
        body["stop_reason"] = STOP_REASON[finish]
        body["usage"] = self._usage(answer, output=answer.completion_tokens)
        return json_reply(200, body, [("request-id", next_id("req_"))])

    def stream_head(self, *, call: Call, prompt: Prompt, answer: Answer) -> list[bytes]:
        message = self._message(call, prompt)
        message["usage"] = self._usage(answer, output=1)
        return [
            sse({"type": "message_start", "message": message}, event="message_start"),
            sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                event="content_block_start",
            ),
            sse({"type": "ping"}, event="ping"),
        ]

    def stream_delta(self, *, call: Call, prompt: Prompt, answer: Answer, text: str) -> bytes:
        return sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
            event="content_block_delta",
        )

    def stream_tail(
        self, *, call: Call, prompt: Prompt, answer: Answer, finish: str, with_usage: bool
    ) -> list[bytes]:
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASON[finish], "stop_sequence": None},
        }
        if with_usage:
            delta["usage"] = {"output_tokens": answer.completion_tokens}
        return [
            sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"),
            sse(delta, event="message_delta"),
            sse({"type": "message_stop"}, event="message_stop"),
        ]

    def stream_error(self, *, call: Call) -> bytes:
        return sse(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            event="error",
        )

    def models(self, *, call: Call) -> Reply:
        names = ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
        return json_reply(
            200,
            {
                "data": [
                    {
                        "id": n,
                        "type": "model",
                        "display_name": n,
                        "created_at": "2025-01-01T00:00:00Z",
                    }
                    for n in names
                ],
                "has_more": False,
                "first_id": names[0],
                "last_id": names[-1],
            },
        )
