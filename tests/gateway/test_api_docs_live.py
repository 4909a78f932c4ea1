"""The docs against the real server: the Quickstart's examples run as printed, and real answers of
every gateway endpoint match the hand-written OpenAPI schema (so the two cannot drift apart)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

FUNDS = 1_000_000
EXAMPLE = re.compile(r'<code data-example="(?P<name>[\w-]+)">(?P<code>.*?)</code>', re.DOTALL)
SUBPROCESS_TIMEOUT = 30


@pytest.fixture
def secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="docs tests")
    return account_services.api_key_create(
        org=personas.org, name="docs", created_by=personas.owner
    ).secret


def _charged_everything_logged(personas: Personas) -> None:
    """The wallet lost exactly what the logged calls cost, and the ledger balances."""
    logs = RequestLog.objects.filter(organization=personas.org)
    wallet = Wallet.objects.get(organization=personas.org)
    assert wallet.balance_micros == FUNDS - sum(log.cost_micros for log in logs)
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


# --- the Quickstart's examples, run as printed ---------------------------------------------------


def _examples(gateway: LiveGateway) -> dict[str, str]:
    page = httpx.get(f"{gateway.url}/docs/").text
    examples = {m["name"]: html.unescape(m["code"]) for m in EXAMPLE.finditer(page)}
    for name, code in examples.items():
        if name != "env":
            assert gateway.url in code, name
    return examples


def test_quickstart_curl_examples_work_as_printed(
    secret: str, live_gateway: LiveGateway, personas: Personas
) -> None:
    examples = _examples(live_gateway)
    env = {"PATH": "/usr/bin:/bin", "LLMWISE_API_KEY": secret}

    def run(name: str) -> str:
        result = subprocess.run(
            ["/bin/bash", "-c", examples[name]],
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=True,
        )
        return result.stdout

    chat = json.loads(run("curl-chat"))
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"]
    native = json.loads(run("curl-native"))
    assert native["object"] == "chat.result"
    assert native["cost"]["micros"] > 0
    models = json.loads(run("curl-models"))
    assert "gpt-4o-mini" in {m["id"] for m in models["data"]}
    stream = run("curl-stream")
    assert stream.rstrip().endswith("data: [DONE]")
    assert '"usage"' in stream
    assert RequestLog.objects.filter(organization=personas.org).count() == 3
    _charged_everything_logged(personas)


def test_quickstart_python_examples_work_as_printed(
    secret: str,
    live_gateway: LiveGateway,
    personas: Personas,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = _examples(live_gateway)
    monkeypatch.setenv("LLMWISE_API_KEY", secret)
    for name in ("python-openai", "python-openai-stream", "python-anthropic"):
        exec(compile(examples[name], name, "exec"), {"__name__": name})  # noqa: S102
        printed = capsys.readouterr().out
        assert printed.strip(), name
        if name != "python-anthropic":
            assert re.search(r"\d+ tokens", printed), name
    # One call each for the OpenAI examples, two (plain and streamed) for the Anthropic one.
    assert RequestLog.objects.filter(organization=personas.org).count() == 4
    _charged_everything_logged(personas)


def node_parses(source: str, script: Path) -> None:
    """``source`` is valid JavaScript for Node (an ES module, so top-level await is fine)."""
    node = shutil.which("node")
    assert node is not None
    script.write_text(source)
    result = subprocess.run(
        [node, "--check", str(script)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_quickstart_node_example_is_valid_javascript(
    live_gateway: LiveGateway, tmp_path: Path
) -> None:
    # The openai npm package is not installed here, so the example is parsed, not run.
    node_parses(_examples(live_gateway)["node-openai"], tmp_path / "quickstart.mjs")


# --- real answers against the schema ---------------------------------------------------------


class SchemaChecker:
    """Validates JSON against a component of the served OpenAPI 3.0 schema, strictly: objects
    may carry no field the schema does not describe."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def json_schema(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.json_schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            return self.json_schema(self.document["components"]["schemas"][name])
        converted = {
            key: (
                {name: self.json_schema(prop) for name, prop in value.items()}
                if key == "properties"
                else self.json_schema(value)
            )
            for key, value in node.items()
            if key not in ("nullable", "example", "description")
        }
        if "properties" in converted and "additionalProperties" not in converted:
            converted["additionalProperties"] = False
        if node.get("nullable"):
            return {"anyOf": [converted, {"type": "null"}]}
        return converted

    def check(self, instance: Any, component: str) -> None:
        schema = self.json_schema({"$ref": f"#/components/schemas/{component}"})
        jsonschema.Draft7Validator(schema).validate(instance)

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return dict(self.document["paths"][path][method])


def _documented_headers(response: httpx.Response, operation: dict[str, Any]) -> None:
    documented = operation["responses"][str(response.status_code)]["headers"]
    streamed = response.headers["content-type"].startswith("text/event-stream")
    for name in documented:
        if streamed and name in ("x-llmwise-cost-micros", "x-llmwise-overhead-ms"):
            continue  # documented as absent on streams
        assert name.lower() in response.headers, (operation["operationId"], name)


def _sse(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        name = None
        data = ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
        events.append((name, data))
    return events


def test_real_answers_match_the_schema(
    secret: str, live_gateway: LiveGateway, personas: Personas
) -> None:
    url = live_gateway.url
    checker = SchemaChecker(httpx.get(f"{url}/api/schema", params={"format": "json"}).json())
    auth = {"Authorization": f"Bearer {secret}"}
    hello = [{"role": "user", "content": "Say hello."}]

    with httpx.Client(base_url=url, headers=auth, timeout=10) as client:
        # OpenAI-compatible
        operation = checker.operation("/v1/chat/completions", "post")
        ok = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": hello})
        assert ok.status_code == 200
        checker.check(ok.json(), "ChatCompletion")
        _documented_headers(ok, operation)
        streamed = client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": hello,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert streamed.status_code == 200
        _documented_headers(streamed, operation)
        events = _sse(streamed.text)
        assert events[-1] == (None, "[DONE]")
        for _, data in events[:-1]:
            checker.check(json.loads(data), "ChatCompletionChunk")
        for body, status in (
            ({"model": "no-such-model", "messages": hello}, 404),
            ({"model": "gpt-4o-mini", "messages": []}, 400),
        ):
            failed = client.post("/v1/chat/completions", json=body)
            assert failed.status_code == status
            checker.check(failed.json(), "ErrorEnvelope")
            _documented_headers(failed, operation)

        models = client.get("/v1/models")
        checker.check(models.json(), "ModelList")
        unauthorized = httpx.get(f"{url}/v1/models")
        assert unauthorized.status_code == 401
        checker.check(unauthorized.json(), "ErrorEnvelope")
        _documented_headers(unauthorized, checker.operation("/v1/models", "get"))

        # Native
        operation = checker.operation("/api/v1/chat", "post")
        native = client.post("/api/v1/chat", json={"model": "gpt-4o-mini", "messages": hello})
        assert native.status_code == 200
        checker.check(native.json(), "NativeChatResult")
        _documented_headers(native, operation)
        native_stream = client.post(
            "/api/v1/chat", json={"model": "gpt-4o-mini", "messages": hello, "stream": True}
        )
        names = []
        for name, data in _sse(native_stream.text):
            component = {"delta": "NativeDeltaEvent", "done": "NativeDoneEvent"}[str(name)]
            checker.check(json.loads(data), component)
            names.append(name)
        assert names[-1] == "done"
        assert set(names) == {"delta", "done"}
        bad = client.post("/api/v1/chat", json={"model": "gpt-4o-mini", "messages": hello, "x": 1})
        assert bad.status_code == 400
        checker.check(bad.json(), "ErrorEnvelope")

        # Anthropic-compatible
        operation = checker.operation("/v1/messages", "post")
        message = client.post(
            "/v1/messages",
            json={"model": "claude-haiku-4.5", "max_tokens": 64, "messages": hello},
        )
        assert message.status_code == 200
        checker.check(message.json(), "AnthropicMessage")
        _documented_headers(message, operation)
        refused = httpx.post(
            f"{url}/v1/messages",
            headers={"x-api-key": "lw-wrong"},
            json={"model": "claude-haiku-4.5", "max_tokens": 64, "messages": hello},
        )
        assert refused.status_code == 401
        checker.check(refused.json(), "AnthropicErrorEnvelope")
        _documented_headers(refused, operation)
        # The x-api-key scheme the schema documents works with a real key too.
        by_header = httpx.post(
            f"{url}/v1/messages",
            headers={"x-api-key": secret},
            json={"model": "claude-haiku-4.5", "max_tokens": 64, "messages": hello},
        )
        assert by_header.status_code == 200

    _charged_everything_logged(personas)
