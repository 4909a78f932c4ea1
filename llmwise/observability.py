"""Optional error reporting (Sentry) and tracing (OpenTelemetry), each switched on by the
environment alone (docs/operations.md):

* ``SENTRY_DSN`` set → :func:`sentry_init` reports unhandled errors and ERROR log lines to Sentry.
  Nothing a customer sent or received goes with them: no request bodies, cookies or frame
  variables, only an allow-list of headers, and every string of the event passes through
  :func:`scrub_event` (our secret patterns, and known prompt/completion fields dropped).
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) set → :func:`tracing_init` exports
  spans over OTLP/HTTP: one server span per HTTP request or WebSocket (:func:`asgi_wrap`, tagged
  with our request id) and one client span per upstream provider call (:func:`upstream_span`).
  JSON log lines get the ``trace_id`` of the span they were written in.

Their packages are imported only when switched on, so a process without the variables loads
and starts nothing of them. :func:`observability_init` is called once per process: by the ASGI
module for the web server and by the Celery worker's start signals.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from llmwise.logging import log_context, log_entry_hooks, redact

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "llmwise"
FILTERED = "[Filtered]"
# URLs whose requests get no trace: probes and the metrics scrape would drown the real traffic.
TRACING_EXCLUDED_URLS = "healthz,readyz,metrics"
# Request headers an error report may carry; every other header (credentials, cookies, Stripe
# signatures, and whatever a client invents) is dropped.
SAFE_HEADERS = frozenset(
    {
        "accept",
        "content-length",
        "content-type",
        "host",
        "user-agent",
        "x-forwarded-proto",
        "x-request-id",
    }
)
# Keys whose values never leave for Sentry, wherever they sit in an event: what a customer sent
# or got back (prompts, completions, bodies), frame variables, and credentials by name.
DROPPED_KEYS = frozenset(
    {
        "api_key",
        "authorization",
        "body",
        "completion",
        "content",
        "cookie",
        "cookies",
        "data",
        "env",
        "messages",
        "password",
        "prompt",
        "secret",
        "stripe-signature",
        "vars",
        "x-api-key",
    }
)

_initialised = False
_state = {"sentry": False, "tracing": False}


# --- Sentry -------------------------------------------------------------------------------------
def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            key: FILTERED if str(key).lower() in DROPPED_KEYS else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def _scrub_request(request: Mapping[str, Any]) -> dict[str, Any]:
    headers = request.get("headers") or {}
    kept = {
        name: redact(str(value))
        for name, value in headers.items()
        if str(name).lower() in SAFE_HEADERS
    }
    url = str(request.get("url") or "")
    return {
        "method": request.get("method"),
        "url": redact(url.split("?", 1)[0]),  # a query string may carry anything
        "headers": kept,
    }


def scrub_event(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the event without customer content or secrets, tagged with the
    request id and organization of the request it happened in."""
    cleaned: dict[str, Any] = _scrub({k: v for k, v in event.items() if k != "request"})
    if isinstance(event.get("request"), Mapping):
        cleaned["request"] = _scrub_request(event["request"])
    user = cleaned.get("user")
    if isinstance(user, dict):
        cleaned["user"] = {k: v for k, v in user.items() if k == "id"}
    context = log_context()
    tags = cleaned.setdefault("tags", {})
    if isinstance(tags, dict):
        for name in ("request_id", "org_id"):
            if context.get(name) is not None:
                tags.setdefault(name, str(context[name]))
    return cleaned


def scrub_breadcrumb(crumb: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's ``before_breadcrumb``: the same scrubbing for the trail before an event."""
    cleaned: dict[str, Any] = _scrub(crumb)
    return cleaned


def sentry_init() -> bool:
    """Start Sentry when ``SENTRY_DSN`` is set; False (and nothing imported) otherwise."""
    if not settings.SENTRY_DSN:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.SENTRY_ENVIRONMENT or None,
        release=settings.SENTRY_RELEASE or None,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        # Sentry types events as its own TypedDict; ours take any mapping-shaped event.
        before_send=cast(Any, scrub_event),
        before_breadcrumb=cast(Any, scrub_breadcrumb),
        # Tracing is OpenTelemetry's job here; Sentry gets errors only.
        traces_sample_rate=None,
    )
    _state["sentry"] = True
    return True


# --- OpenTelemetry ------------------------------------------------------------------------------
def tracing_active() -> bool:
    """Whether this process exports traces (cheap: the hot path asks it per request)."""
    return _state["tracing"]


def _trace_id_to_log(entry: dict[str, Any]) -> None:
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        entry["trace_id"] = format(span_context.trace_id, "032x")


def tracing_init() -> bool:
    """Start exporting spans when an OTLP endpoint is configured; False (and nothing imported)
    otherwise. Endpoint, headers, sampler and resource come from the standard OTEL_* variables;
    the service is called ``llmwise`` unless OTEL_SERVICE_NAME says otherwise."""
    if not settings.OTEL_TRACING:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log_entry_hooks.append(_trace_id_to_log)
    _state["tracing"] = True
    return True


def span_tag(**attributes: str) -> None:
    """Put our identifiers (``request_id``…) on the current span, as ``llmwise.<name>``."""
    from opentelemetry import trace

    span = trace.get_current_span()
    for name, value in attributes.items():
        span.set_attribute(f"llmwise.{name}", value)


class UpstreamSpan:
    """The client span of one upstream provider call (see :func:`upstream_span`)."""

    def __init__(self, *, provider: str, url: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parsed = urlsplit(url)
        self.span = trace.get_tracer("llmwise.upstream").start_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                # Without the query: Gemini keys may travel there.
                "url.full": urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", "")),
                "server.address": parsed.hostname or "",
                "llmwise.provider": provider,
            },
        )

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` plus the W3C trace context, so the provider's side joins the trace."""
        from opentelemetry import propagate, trace

        carrier = dict(headers)
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def status(self, status: int) -> None:
        from opentelemetry.trace import StatusCode

        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a server error, as OpenTelemetry's HTTP conventions say
            self.span.set_status(StatusCode.ERROR)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            from opentelemetry.trace import StatusCode

            self.span.set_attribute("error.type", type(error).__name__)
            self.span.set_status(StatusCode.ERROR)
        self.span.end()


def upstream_span(*, provider: str, url: str) -> UpstreamSpan | None:
    """A started client span for an upstream call when tracing is on, else None (one check).

    The span is never made "current": a stream's span lives across the yields of an async
    generator, where a context change would leak into the consumer."""
    if not _state["tracing"]:
        return None
    return UpstreamSpan(provider=provider, url=url)


def asgi_wrap(app: Any) -> Any:
    """The ASGI app inside OpenTelemetry's server-span middleware when tracing is on."""
    if not tracing_active():
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, excluded_urls=TRACING_EXCLUDED_URLS)


# --- both ---------------------------------------------------------------------------------------
def observability_init() -> dict[str, bool]:
    """Switch on what the environment asks for, once per process; returns what is on. Call it
    before forking worker processes: both SDKs restart their sender threads in a forked child."""
    global _initialised
    if _initialised:
        return dict(_state)
    _initialised = True
    try:
        sentry_init()
    except Exception:
        logger.exception("observability: Sentry could not start")
    try:
        tracing_init()
    except Exception:
        logger.exception("observability: tracing could not start")
    return dict(_state)
