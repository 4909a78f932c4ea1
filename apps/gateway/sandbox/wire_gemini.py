"""The Gemini generateContent wire (providers.md §3): google.rpc error statuses, SSE without a
terminal marker (the last chunk carries ``finishReason`` and the usage totals)."""

from __future__ import annotations

from typing import Any

from .faults import Fault
from .text import Answer, Prompt
from .wire import INVALID_KEY_PREFIX, BadRequest, Call, Reply, Wire, json_reply, next_id, sse

MAX_INPUT_TOKENS = 1_048_576
FINISH_REASON = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
STATUS_NAME = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MODEL_VERSION_SUFFIX = "-sandbox"


def _parts_text(parts: Any, what: str) -> str:
    if not isinstance(parts, list):
        raise BadRequest(f"Invalid JSON payload received. {what}.parts must be a list")
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


class GeminiWire(Wire):
    def route(self, call: Call) -> str | None:
        if call.method == "GET" and call.path == "/v1beta/models":
            return "models"
        prefix = "/v1beta/models/"
        if call.method != "POST" or not call.path.startswith(prefix):
            return None
        model, _, method = call.path[len(prefix) :].partition(":")
        if method == "generateContent":
            call.model = model
            return "chat"
        if method == "streamGenerateContent":
            call.model = model
            call.query.setdefault("_stream", "1")
            return "chat"
        return None

    def _error(
        self,
        code: int,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Reply:
        error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAME[code]}
        if details:
            error["details"] = details
        return json_reply(code, {"error": error}, headers)

    def auth_error(self, call: Call) -> Reply | None:
        key = call.headers.get("x-goog-api-key") or call.query.get("key")
        if not key:
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key.startswith(INVALID_KEY_PREFIX):
            # Gemini's real answer to a wrong key is a 400 with reason API_KEY_INVALID.
            return self._error(
                400,
                "API key not valid. Please pass a valid API key.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )
        return None

    def bad_request(self, message: str) -> Reply:
        return self._error(400, message)

    def not_found(self, message: str) -> Reply:
        return self._error(404, f"models/{message} is not found for API version v1beta")

    def fault_reply(self, fault: Fault, *, call: Call, prompt: Prompt, retry_after: int) -> Reply:
        if fault == Fault.HTTP_400:
            return self._error(
                400,
                f"The input token count ({MAX_INPUT_TOKENS + 1}) exceeds the maximum number of "
                f"tokens allowed ({MAX_INPUT_TOKENS}).",
            )
        if fault == Fault.HTTP_401:
            return self._error(401, "Request had invalid authentication credentials.")
        if fault in (Fault.HTTP_429, Fault.RESOURCE_EXHAUSTED, Fault.INSUFFICIENT_QUOTA):
            # Gemini says when to retry in the body (RetryInfo), not in a Retry-After header.
            return self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_after}s",
                    }
                ],
            )
        if fault == Fault.CONTENT_POLICY:
            return self._error(400, "The request was blocked due to safety (content policy).")
        if fault == Fault.HTTP_500:
            return self._error(500, "An internal error has occurred. Please retry.")
        return self._error(503, "The model is overloaded. Please try again later.")

    def parse(self, call: Call) -> Prompt:
        body = call.body
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON payload received.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        texts: list[tuple[str, str]] = []
        system = body.get("systemInstruction")
        if system is not None:
            texts.append(("system", _parts_text(system.get("parts"), "systemInstruction")))
        for index, content in enumerate(contents):
            role = content.get("role", "user") if isinstance(content, dict) else None
            if role not in ("user", "model"):
                raise BadRequest(
                    f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: "
                    "user, model."
                )
            texts.append(
                (
                    "user" if role == "user" else "assistant",
                    _parts_text(content.get("parts"), f"contents[{index}]"),
                )
            )
        config = body.get("generationConfig") or {}
        max_tokens = config.get("maxOutputTokens") if isinstance(config, dict) else None
        return Prompt(
            model=call.model,
            texts=texts,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            stream=call.query.get("_stream") == "1",
        )

    def _usage(self, answer: Answer, *, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": answer.prompt_tokens}
        if answer.cached_tokens:
            usage["cachedContentTokenCount"] = answer.cached_tokens
        if final:
            usage["candidatesTokenCount"] = answer.completion_tokens
            if answer.reasoning_tokens:
                usage["thoughtsTokenCount"] = answer.reasoning_tokens
            usage["totalTokenCount"] = (
                answer.prompt_tokens + answer.completion_tokens + answer.reasoning_tokens
            )
        else:
            usage["totalTokenCount"] = answer.prompt_tokens
        return usage

    def _response(
        self,
        call: Call,
        text: str,
        *,
        finish: str | None,
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        response_id = call.headers.get("x-sandbox-response-id")
        if response_id is None:
            response_id = call.headers["x-sandbox-response-id"] = next_id("resp")
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if finish is not None:
            candidate["finishReason"] = FINISH_REASON[finish]
        response: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": call.model + MODEL_VERSION_SUFFIX,
            "responseId": response_id,
        }
        if usage is not None:
            response["usageMetadata"] = usage
        return response

    def completion(self, *, call: Call, prompt: Prompt, answer: Answer, finish: str) -> Reply:
        body = self._response(
            call, answer.text, finish=finish, usage=self._usage(answer, final=True)
        )
        return json_reply(200, body)

    def stream_head(self, *, call: Call, prompt: Prompt, answer: Answer) -> list[bytes]:
        return []

    def stream_delta(self, *, call: Call, prompt: Prompt, answer: Answer, text: str) -> bytes:
        return sse(self._response(call, text, finish=None, usage=self._usage(answer, final=False)))

    def stream_tail(
        self, *, call: Call, prompt: Prompt, answer: Answer, finish: str, with_usage: bool
    ) -> list[bytes]:
        usage = self._usage(answer, final=True) if with_usage else None
        return [sse(self._response(call, "", finish=finish, usage=usage))]

    def stream_error(self, *, call: Call) -> bytes:
        return sse(
            {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded. Please try again later.",
                    "status": "UNAVAILABLE",
                }
            }
        )

    def models(self, *, call: Call) -> Reply:
        names = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
        return json_reply(
            200,
            {
                "models": [
                    {
                        "name": f"models/{n}",
                        "displayName": n,
                        "supportedGenerationMethods": ["generateContent", "countTokens"],
                    }
                    for n in names
                ]
            },
        )
