"""The OpenAPI schema at /api/schema and the public docs pages (/docs/, /docs/api/)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import resolve
from drf_spectacular.validation import validate_schema

from apps.accounts import services as account_services
from tests.conftest import Personas

pytestmark = pytest.mark.django_db

ENVELOPE = "#/components/schemas/ErrorEnvelope"
ANTHROPIC_ENVELOPE = "#/components/schemas/AnthropicErrorEnvelope"
GATEWAY_OPERATIONS = {
    ("/v1/chat/completions", "post"),
    ("/v1/models", "get"),
    ("/api/v1/chat", "post"),
    ("/v1/messages", "post"),
}
CALL_OPERATIONS = GATEWAY_OPERATIONS - {("/v1/models", "get")}
SUCCESS_HEADERS = {
    "x-request-id",
    "x-llmwise-model",
    "x-llmwise-cost-micros",
    "x-llmwise-overhead-ms",
}
EXTERNAL_ASSET = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
EXAMPLE = re.compile(r'<code data-example="(?P<name>[\w-]+)">(?P<code>.*?)</code>', re.DOTALL)


@pytest.fixture
def schema() -> dict[str, Any]:
    response = Client().get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    return dict(response.json())


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    # drf-spectacular ships the official OpenAPI 3.x JSON meta-schemas: validated offline.
    validate_schema(schema)
    # The meta-schema does not follow references; every one must point at a component.
    for ref in _refs(schema):
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in schema["components"][kind], ref


def test_schema_describes_every_gateway_endpoint(schema: dict[str, Any]) -> None:
    for path, method in GATEWAY_OPERATIONS:
        resolve(path)  # documented endpoints really are routed
        operation = schema["paths"][path][method]
        assert operation["operationId"]
        assert operation["summary"]
        assert {"ApiKey": []} in operation["security"]
        assert "200" in operation["responses"]
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An LLMWise API key (lw-…) from the dashboard.",
    }
    # DRF endpoints are still generated from their views.
    for path in ("/api/v1/key", "/api/v1/wallet"):
        operation = schema["paths"][path]["get"]
        assert operation["operationId"].endswith("_retrieve")
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]


def test_chat_completions_documents_request_stream_and_headers(schema: dict[str, Any]) -> None:
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schema["components"]["schemas"][body.rsplit("/", 1)[1]]
    assert {"model", "messages"} <= set(request["required"])
    assert request["properties"]["stream_options"]["properties"]["include_usage"]
    ok = operation["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    # A stream is described per event, as OpenAPI 3.0 tools read SSE: name and data text.
    event = ok["content"]["text/event-stream"]["schema"]
    assert event["required"] == ["event", "data"]
    assert event["properties"]["event"]["enum"] == ["message"]
    assert "`ChatCompletionChunk`" in event["properties"]["data"]["description"]
    assert "data: [DONE]" in ok["content"]["text/event-stream"]["example"]
    assert set(ok["headers"]) == SUCCESS_HEADERS
    completion = schema["components"]["schemas"]["ChatCompletion"]
    assert completion["properties"]["object"]["enum"] == ["chat.completion"]


def test_every_gateway_error_response_references_the_envelope(schema: dict[str, Any]) -> None:
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    assert set(envelope["properties"]["error"]["required"]) == {
        "message",
        "type",
        "code",
        "param",
        "provider",
        "request_id",
    }
    for path, method in GATEWAY_OPERATIONS:
        responses = schema["paths"][path][method]["responses"]
        errors = {int(status): r for status, r in responses.items() if int(status) >= 400}
        assert 401 in errors
        if (path, method) in CALL_OPERATIONS:
            overloaded = 529 if path == "/v1/messages" else 503
            assert {400, 401, 402, 403, 404, 413, 429, 502, overloaded, 504} <= set(errors)
        # The Anthropic endpoint answers Anthropic's error shape so its SDK raises typed errors.
        expected = ANTHROPIC_ENVELOPE if path == "/v1/messages" else ENVELOPE
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == {"$ref": expected}
            assert "x-request-id" in response["headers"]
            if status in (429, 503, 529):
                assert "Retry-After" in response["headers"], (path, status)


ORCHESTRATION_OPERATIONS = {
    ("/api/v1/compare", "post"): "CompareRequest",
    ("/api/v1/blend", "post"): "BlendRequest",
    ("/api/v1/judge", "post"): "JudgeRequest",
    ("/api/v1/orchestrations/{request_id}", "get"): None,
}


def test_schema_describes_the_orchestration_endpoints(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for (path, method), body in ORCHESTRATION_OPERATIONS.items():
        resolve(path)
        operation = schema["paths"][path][method]
        assert operation["tags"] == ["Orchestration"]
        assert {"ApiKey": []} in operation["security"]
        errors = {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}
        assert {401, 404} <= set(errors)
        for response in errors.values():
            assert response["content"]["application/json"]["schema"] == {"$ref": ENVELOPE}
        if body is None:
            continue
        assert {400, 402, 403, 429, 502, 503, 504} <= set(errors)
        request = components[body]
        assert request["additionalProperties"] is False
        assert "messages" in request["required"]
        assert request["example"]
        stream = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert {"run", "done", "error"} <= set(stream["properties"]["event"]["enum"])
    # The candidate limits come from the settings.
    models = components["CompareRequest"]["properties"]["models"]
    assert (models["minItems"], models["maxItems"]) == (2, 5)


def test_every_operation_shows_examples_for_this_server(schema: dict[str, Any]) -> None:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            samples = operation["x-codeSamples"]
            assert [s["label"] for s in samples] == ["curl", "Python", "Node.js"], path
            for sample in samples:
                assert "http://testserver" in sample["source"], (path, sample["label"])
                assert "LLMWISE_API_KEY" in sample["source"], (path, sample["label"])
            assert samples[0]["source"].startswith(f"curl http://testserver{path.split('{')[0]}")
            if method == "post" and path.startswith("/api/"):
                assert "-d '{" in samples[0]["source"], path


def test_spectacular_command_validates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "/v1/chat/completions" in out.read_text()


def test_reference_page_is_public_and_self_hosted() -> None:
    response = Client().get("/docs/api/")
    assert response.status_code == 200
    page = response.content.decode()
    assert not EXTERNAL_ASSET.search(page), "the reference page loads something from another host"
    assert 'Redoc.init("/api/schema"' in page
    # Redoc's footer logo is on Redocly's CDN: the page's policy keeps the browser from fetching it.
    policy = response["Content-Security-Policy"]
    assert "img-src 'self' data:" in policy
    assert "default-src 'self'" in policy
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts == ["/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"]
    asset = Client().get(scripts[0])
    assert asset.status_code == 200
    assert b"Redoc" in b"".join(asset.streaming_content)  # type: ignore[attr-defined]


def _examples(page: str) -> dict[str, str]:
    return {m["name"]: html.unescape(m["code"]) for m in EXAMPLE.finditer(page)}


def test_quickstart_examples_use_this_server() -> None:
    for kwargs, base_url in (
        ({}, "http://testserver"),
        ({"secure": True}, "https://testserver"),
        ({"HTTP_HOST": "127.0.0.1:8123"}, "http://127.0.0.1:8123"),
    ):
        response = Client().get("/docs/", **kwargs)
        assert response.status_code == 200
        page = response.content.decode()
        assert not EXTERNAL_ASSET.search(page)
        examples = _examples(page)
        assert {
            "curl-chat",
            "curl-stream",
            "python-openai",
            "python-openai-stream",
            "python-anthropic",
            "node-openai",
        } <= set(examples)
        for name, code in examples.items():
            if name != "env":
                assert base_url in code, name
        assert f'base_url="{base_url}/v1"' in examples["python-openai"]
        assert f'base_url="{base_url}"' in examples["python-anthropic"]
        assert f'baseURL: "{base_url}/v1"' in examples["node-openai"]
        assert '"stream": true' in examples["curl-stream"]
        assert "stream=True" in examples["python-openai-stream"]
        assert "messages.stream(" in examples["python-anthropic"]
        assert "stream: true" in examples["node-openai"]


def test_quickstart_shows_only_the_readers_own_key_prefix(personas: Personas) -> None:
    anonymous = _examples(Client().get("/docs/").content.decode())
    assert anonymous["env"].startswith('export LLMWISE_API_KEY="lw-…"')

    issued = account_services.api_key_create(org=personas.org, name="ci", created_by=personas.owner)
    other = account_services.api_key_create(
        org=personas.other_org, name="theirs", created_by=personas.outsider
    )
    for user in (personas.owner, personas.member):
        page = personas.client(user).get("/docs/").content.decode()
        assert f'LLMWISE_API_KEY="{issued.api_key.prefix}…"' in _examples(page)["env"]
        assert issued.secret not in page
        assert other.api_key.prefix not in page
    outsider_page = personas.client(personas.outsider).get("/docs/").content.decode()
    assert other.api_key.prefix in outsider_page
    assert issued.api_key.prefix not in outsider_page

    account_services.api_key_revoke(
        org=personas.org, actor=personas.owner, key_id=issued.api_key.pk
    )
    page = personas.client(personas.owner).get("/docs/").content.decode()
    assert issued.api_key.prefix not in page
    assert 'LLMWISE_API_KEY="lw-…"' in _examples(page)["env"]


def test_docs_are_linked_from_the_site_and_the_dashboard(personas: Personas) -> None:
    assert 'href="/docs/"' in Client().get("/").content.decode()
    overview = personas.client(personas.owner).get("/dashboard/").content.decode()
    assert 'href="/docs/"' in overview
    assert 'href="/docs/api/"' in overview
