"""OpenAPI description of API-key authentication (drf-spectacular)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An LLMWise API key (lw-…) from the dashboard.",
        }


# What every key-authenticated DRF operation may answer besides its success, in the one error
# envelope (the component the gateway's hook defines; described here too when it is missing).
ERROR_ENVELOPE_COMPONENT = "ErrorEnvelope"
_ERROR_DESCRIPTIONS = {
    "400": "Invalid request (a malformed or out-of-range parameter). Nothing is charged.",
    "401": "Missing, invalid, expired or revoked API key.",
    "404": "Not found (or belongs to another organization).",
    "405": "Method not allowed.",
    "429": "Rate limited: too many failed API key attempts from this address, or a request "
    "limit. Wait `Retry-After` seconds.",
}
_FALLBACK_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "provider": {"type": "string", "nullable": True},
                "request_id": {"type": "string"},
            },
        }
    },
}
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def error_responses_hook(
    result: dict[str, Any], generator: Any, request: Any, public: bool, **kwargs: Any
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: document the error responses of every operation
    secured by an API key that documents none itself (DRF views describe only their success;
    the hand-written gateway paths describe theirs and are left alone): 401 and 429
    (authentication and its brute-force limit), 400 (validation: bodies and query parameters),
    404 (an object named in the path or the body)."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault(ERROR_ENVELOPE_COMPONENT, _FALLBACK_ENVELOPE)
    ref = {"$ref": f"#/components/schemas/{ERROR_ENVELOPE_COMPONENT}"}
    known_headers = components.get("headers", {})

    def header(name: str) -> dict[str, Any]:
        if name in known_headers:
            return {"$ref": f"#/components/headers/{name}"}
        return {"schema": {"type": "string"}}

    for path, item in result.get("paths", {}).items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if not operation or not operation.get("security"):
                continue
            responses = operation.setdefault("responses", {})
            if any(str(status)[0] in "45" for status in responses):
                continue  # its author described its errors (the hand-written gateway paths)
            statuses = ["401", "429"]
            parameters = operation.get("parameters", [])
            if method != "get" or any(p.get("in") == "query" for p in parameters):
                statuses.append("400")
            if "{" in path or method != "get":  # an id in the path, or a name in the body
                statuses.append("404")
            for status in statuses:
                headers = {"x-request-id": header("RequestId")}
                if status == "429":
                    headers["Retry-After"] = header("RetryAfter")
                responses[status] = {
                    "description": _ERROR_DESCRIPTIONS[status],
                    "headers": headers,
                    "content": {"application/json": {"schema": ref}},
                }
    return result
