"""Sentry and OpenTelemetry: off without their variables, on with them, and faked at the wire.

Each switched-on case runs in a child process (both SDKs install process-wide hooks) that sends
to a small HTTP server of this test on 127.0.0.1: an OTLP collector for the traces, a Sentry
ingest endpoint for the error reports. What arrives there is what a real backend would get.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmwise.observability import SAFE_HEADERS, scrub_breadcrumb, scrub_event

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 20


# --- a tiny ingest server ------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Ingest:
    url: str
    received: list[Received] = field(default_factory=list)

    def wait_for(self, path_part: str, *, count: int = 1) -> list[Received]:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            found = [r for r in list(self.received) if path_part in r.path]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"nothing arrived at {path_part}"
            time.sleep(0.05)


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(Received(self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Ingest(f"http://127.0.0.1:{server.server_address[1]}", received)
    server.shutdown()
    server.server_close()


def _env(**extra: str) -> dict[str, str]:
    """This environment without any Sentry/OpenTelemetry switch, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SENTRY_", "OTEL_", "DJANGO_SETTINGS", "LOG_FORMAT"))
    }
    env.update(DJANGO_SETTINGS_MODULE="llmwise.settings.test", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- off ------------------------------------------------------------------------------------------
def test_nothing_starts_without_the_variables() -> None:
    probe = (
        "import json, sys\n"
        "import llmwise.asgi as asgi\n"
        "from llmwise.observability import observability_init\n"
        "on = observability_init()\n"
        "sentry_imported = 'sentry_sdk' in sys.modules\n"
        "from opentelemetry import trace\n"
        "from llmwise.observability import upstream_span\n"
        "print(json.dumps({'on': on, 'sentry_imported': sentry_imported,\n"
        "  'tracer_provider': type(trace.get_tracer_provider()).__name__,\n"
        "  'upstream_span': upstream_span(provider='openai', url='http://x/') is not None,\n"
        "  'asgi_wrapped': type(asgi.application.app).__module__}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["on"] == {"sentry": False, "tracing": False}
    assert not report["sentry_imported"]
    # No tracer provider was installed (the API's placeholder answers), no upstream spans.
    assert report["tracer_provider"] == "ProxyTracerProvider"
    assert report["upstream_span"] is False
    assert "opentelemetry" not in report["asgi_wrapped"]  # no tracing middleware around the app


# --- OpenTelemetry --------------------------------------------------------------------------------
def _spans(received: list[Received]) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) for every span in the OTLP/HTTP protobuf exports."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    out = []
    for item in received:
        export = ExportTraceServiceRequest.FromString(item.body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                out.extend((resource, span) for span in scope_spans.spans)
    return out


def _attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = (
            value.string_value if value.HasField("string_value") else value.int_value
        )
    return values


@pytest.mark.slow
def test_tracing_exports_a_span_per_request_and_logs_name_the_trace(
    ingest: Ingest, tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    env = _env(
        OTEL_EXPORTER_OTLP_ENDPOINT=ingest.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        LOG_FORMAT="json",
    )
    command = [sys.executable, "-m", "uvicorn", "llmwise.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            assert server.poll() is None, log.read_text()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert response.status_code == 401
        request_id = response.headers["x-request-id"]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        deadline = time.monotonic() + WAIT_SECONDS
        ours: list[tuple[dict[str, Any], Any]] = []
        while not ours:
            assert time.monotonic() < deadline, "no span with our request id arrived"
            spans = _spans(ingest.received)
            ours = [
                (resource, span)
                for resource, span in spans
                if _attributes(span).get("llmwise.request_id") == request_id
            ]
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)

    assert all(item.path == "/v1/traces" for item in ingest.received)
    (resource, span) = ours[0]
    assert resource["service.name"] == "llmwise"
    assert span.name.startswith("GET")
    attributes = _attributes(span)
    assert 401 in (attributes.get("http.status_code"), attributes.get("http.response.status_code"))
    # Probes are not traced.
    every = _spans(ingest.received)
    assert not any("/healthz" in str(_attributes(s)) for _, s in every)

    # The JSON log line Django wrote about the refused request names the same trace.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("message") == "Unauthorized: /v1/models"]
    assert refused, log.read_text()
    assert refused[0]["request_id"] == request_id
    assert refused[0]["trace_id"] == span.trace_id.hex()


# --- Sentry ---------------------------------------------------------------------------------------
# The project's URLs plus a view that fails while holding the caller's credentials (the one the
# secret-redaction test uses; CSRF off so a plain HTTP client can post to it).
CRASH_SETTINGS = """
from llmwise.settings.test import *  # noqa: F403
ROOT_URLCONF = "ops_crash_urls"
"""
CRASH_URLS = """
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from llmwise.urls import urlpatterns
from tests.security.crash_urls import crash
urlpatterns = [path("_test/crash", csrf_exempt(crash)), *urlpatterns]
"""


def _envelope_items(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    lines = body.split(b"\n")
    items = []
    index = 1  # line 0 is the envelope header
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        header = json.loads(lines[index])
        payload = lines[index + 1]
        items.append((header, json.loads(payload) if payload.startswith(b"{") else payload))
        index += 2
    return items


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The ASGI app under uvicorn in a child process; returns it and its base URL."""
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "llmwise.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        assert server.poll() is None, log.read_text()
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            return server, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=15)


@pytest.mark.slow
def test_sentry_receives_errors_without_secrets_or_prompts(ingest: Ingest, tmp_path: Path) -> None:
    secrets_used = {
        "byok key": "sk-proj-" + secrets.token_hex(16),
        "api key": "lw-" + secrets.token_urlsafe(30),
        "google key": "AIza" + secrets.token_hex(17),
        "cookie": "cookie" + secrets.token_hex(12),
        "prompt": "PromptMark" + secrets.token_hex(6),
    }
    (tmp_path / "ops_crash_settings.py").write_text(CRASH_SETTINGS)
    (tmp_path / "ops_crash_urls.py").write_text(CRASH_URLS)
    port = ingest.url.rsplit(":", 1)[1]
    env = _env(SENTRY_DSN=f"http://publickey@127.0.0.1:{port}/42")
    env.update(
        DJANGO_SETTINGS_MODULE="ops_crash_settings",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}",
    )
    server, url = _serve(env, tmp_path / "server.log")
    try:
        response = httpx.post(
            f"{url}/_test/crash?key={secrets_used['google key']}",
            data={"secret": secrets_used["byok key"], "prompt": secrets_used["prompt"]},
            headers={
                "Authorization": f"Bearer {secrets_used['api key']}",
                "Cookie": f"sessionid={secrets_used['cookie']}",
                "User-Agent": "ops-test-agent",
            },
            timeout=10,
        )
        assert response.status_code == 500
        envelopes = ingest.wait_for("/api/42/envelope/")
    finally:
        _stop(server)

    everything = b"\n".join(item.body for item in ingest.received).decode()
    for name, value in secrets_used.items():
        assert value not in everything, f"{name} reached Sentry"
    events = [
        payload
        for item in envelopes
        for header, payload in _envelope_items(item.body)
        if header.get("type") == "event"
    ]
    crash = next(e for e in events if "exception" in e)
    exception = crash["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert "simulated failure" in exception["value"]
    assert all("vars" not in frame for frame in exception["stacktrace"]["frames"])
    assert crash["tags"]["request_id"] == response.headers["x-request-id"]
    request = crash["request"]
    assert request["method"] == "POST"
    assert request["url"].endswith("/_test/crash")
    assert {name.lower() for name in request["headers"]} <= SAFE_HEADERS
    assert request["headers"]["user-agent"] == "ops-test-agent"
    assert "data" not in request
    assert "cookies" not in request


def test_the_scrubber_cleans_a_real_sentry_event() -> None:
    """An event built by Sentry's own code (frame variables on) plus the request part its Django
    integration adds, with a customer's prompt and credentials everywhere."""
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    api_key = "lw-" + secrets.token_urlsafe(30)
    byok = "sk-ant-" + secrets.token_hex(16)
    prompt = "PromptMark" + secrets.token_hex(6)

    def call_provider(messages: list[dict[str, str]], headers: dict[str, str]) -> None:
        raise ValueError(f"provider refused {byok}")

    try:
        call_provider([{"role": "user", "content": prompt}], {"x-api-key": byok})
    except ValueError:
        options = sentry_sdk.Client(include_local_variables=True).options
        event, hint = event_from_exception(sys.exc_info(), client_options=options)
    frames = event["exception"]["values"][0]["stacktrace"]["frames"]
    assert prompt in json.dumps(frames)  # the raw event does carry it: the scrubber must act
    event["request"] = {
        "method": "POST",
        "url": f"https://api.llmwise.test/v1/chat/completions?api_key={api_key}",
        "query_string": f"api_key={api_key}",
        "headers": {
            "Authorization": f"Bearer {api_key}",
            "X-Api-Key": api_key,
            "Cookie": "sessionid=abc",
            "User-Agent": "OpenAI/Python",
            "Content-Type": "application/json",
        },
        "data": {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]},
        "cookies": {"sessionid": "abc"},
        "env": {"REMOTE_ADDR": "203.0.113.9"},
    }
    event["extra"] = {"prompt": prompt, "attempt": 2}
    event["user"] = {"id": "7", "ip_address": "203.0.113.9", "email": "someone@example.com"}
    event["breadcrumbs"] = {
        "values": [{"category": "log", "message": f"calling with x-api-key: {byok}"}]
    }

    cleaned = scrub_event(event, hint)
    text = json.dumps(cleaned, default=str)
    for value in (api_key, byok, prompt, "someone@example.com", "203.0.113.9", "sessionid"):
        assert value not in text, value
    value = cleaned["exception"]["values"][0]
    assert value["type"] == "ValueError"
    assert value["value"] == "provider refused [REDACTED]"
    assert all(frame["vars"] == "[Filtered]" for frame in value["stacktrace"]["frames"])
    assert cleaned["request"] == {
        "method": "POST",
        "url": "https://api.llmwise.test/v1/chat/completions",
        "headers": {"User-Agent": "OpenAI/Python", "Content-Type": "application/json"},
    }
    assert cleaned["extra"] == {"prompt": "[Filtered]", "attempt": 2}
    assert cleaned["user"] == {"id": "7"}
    assert cleaned["level"] == "error"

    crumb = scrub_breadcrumb(
        {"category": "httpx", "message": f"Bearer {api_key}", "data": {"body": prompt}}
    )
    assert api_key not in json.dumps(crumb)
    assert prompt not in json.dumps(crumb)
