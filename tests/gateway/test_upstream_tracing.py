"""With tracing on, every upstream provider call is a client span, and the provider receives
the trace context (``traceparent``) so its side of the call joins the same trace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from apps.gateway.providers.base import ProviderError
from apps.gateway.providers.registry import adapter_for
from apps.gateway.sandbox import SandboxServer
from llmwise import observability

from .conftest import TEST_TIMEOUTS, chat

pytestmark = pytest.mark.anyio

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class Upstream:
    """An OpenAI-shaped upstream that remembers the headers of every request."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = json.dumps(ANSWER if self.status == 200 else {"error": {"message": "down"}})
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing switched on for this test, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set only once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setitem(observability._state, "tracing", True)
    yield exporter
    exporter.shutdown()


async def _drain(events: AsyncIterator[Any]) -> None:
    async for _ in events:
        pass


def _served(app: Upstream) -> SandboxServer:
    return SandboxServer(app=app).start()  # type: ignore[arg-type]


@pytest.mark.usefixtures("_close_clients")
async def test_a_call_is_a_client_span_and_passes_the_trace_on(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream()
    server = _served(upstream)
    try:
        adapter = adapter_for(
            provider="openai", base_url=f"{server.base_url}/v1", timeouts=TEST_TIMEOUTS
        )
        result = await adapter.complete(chat(model="gpt-4o-mini"), api_key="sk-test?x")
    finally:
        server.stop()
    assert result.text == "hi"

    (span,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    attributes = dict(span.attributes or {})
    assert attributes["llmwise.provider"] == "openai"
    assert attributes["url.full"] == f"{server.base_url}/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert span.status.status_code != StatusCode.ERROR
    # W3C trace context: 00-<trace id>-<span id>-<flags>
    _, trace_id, span_id, _ = upstream.headers[0]["traceparent"].split("-")
    assert span.context is not None
    assert (trace_id, span_id) == (
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
    )


@pytest.mark.usefixtures("_close_clients")
async def test_a_failed_stream_is_an_error_span(spans: InMemorySpanExporter) -> None:
    server = _served(Upstream(status=503))
    try:
        adapter = adapter_for(
            provider="openai", base_url=f"{server.base_url}/v1", timeouts=TEST_TIMEOUTS
        )
        with pytest.raises(ProviderError):
            await _drain(adapter.stream(chat(model="gpt-4o-mini"), api_key="sk-test"))
    finally:
        server.stop()

    (span,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert dict(span.attributes or {})["http.response.status_code"] == 503
    assert span.status.status_code == StatusCode.ERROR


@pytest.mark.usefixtures("_close_clients")
async def test_tracing_off_sends_no_trace_context() -> None:
    upstream = Upstream()
    server = _served(upstream)
    try:
        adapter = adapter_for(
            provider="openai", base_url=f"{server.base_url}/v1", timeouts=TEST_TIMEOUTS
        )
        await adapter.complete(chat(model="gpt-4o-mini"), api_key="sk-test")
    finally:
        server.stop()
    assert "traceparent" not in upstream.headers[0]
