"""Prometheus metrics at ``GET /metrics`` (docs/operations.md lists them).

Two kinds of metric, so that serving a request never waits on metrics:

* **Events** are counted where they happen, in memory: requests, errors and latencies (from the
  request log row the gateway writes, :func:`request_logged`), HTTP responses (the request-id
  middleware), rate-limit refusals, failed settlements. A request costs a few counter and
  histogram updates and no I/O. With ``PROMETHEUS_MULTIPROC_DIR`` set in the environment before
  the process starts (the Docker entry point does it for the web role), prometheus_client's
  multiprocess mode keeps each server process's values in files in that directory and the scrape
  adds them up, so several uvicorn workers report as one; without it the values live in this
  process's registry.
* **State** is read when Prometheus scrapes, by the process that answers: open and overdue
  reservations (one indexed count), circuit-breaker states (the shared counters), the Celery
  queue length (``LLEN`` on the Redis broker) and Celery task failures (counted in the shared
  cache by whichever worker ran the task, so a worker in another container shows up here too).

Label values come from closed sets (endpoint names, catalog model ids, providers, error types),
never from client input, so the number of series stays bounded.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.cache import never_cache
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from apps.gateway.models import RequestLog

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

MS_PER_SECOND = 1000.0
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Gateway overhead is milliseconds; upstream calls and first tokens are seconds to minutes.
OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_VIEW = "unmatched"
# kombu's Redis transport keeps messages of priority > 0 in sibling lists named
# "<queue>\x06\x16<priority>" (its default priority steps 3, 6, 9); the queue length is their sum.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
TASK_FAILURES_CACHE_PREFIX = "metrics:task_failures:"
BROKER_TIMEOUT_SECONDS = 2.0
COUNTED_MARK = "_llmwise_failure_counted"

# A "<name>_created" series per label set doubles what Prometheus stores for nothing we use.
disable_created_metrics()

# --- events ---------------------------------------------------------------------------------------
HTTP_RESPONSES = Counter(
    "llmwise_http_responses",
    "HTTP responses by view (URL name), method and status code, every endpoint included.",
    ["view", "method", "status"],
)
GATEWAY_REQUESTS = Counter(
    "llmwise_gateway_requests",
    "Gateway calls written to the request log, by API endpoint, model, provider and outcome.",
    ["endpoint", "model", "provider", "status"],
)
GATEWAY_ERRORS = Counter(
    "llmwise_gateway_errors",
    "Gateway calls that ended in an error, by API endpoint, model, provider and error type.",
    ["endpoint", "model", "provider", "error_type"],
)
GATEWAY_OVERHEAD = Histogram(
    "llmwise_gateway_overhead_seconds",
    "Time spent in the gateway itself, upstream calls excluded (streams: until the first token).",
    ["endpoint"],
    buckets=OVERHEAD_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "llmwise_upstream_latency_seconds",
    "Time spent waiting on providers per call, failed attempts included "
    "(streams: until the provider's first event).",
    ["provider", "stream"],
    buckets=UPSTREAM_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmwise_time_to_first_token_seconds",
    "Streams: from the request's arrival to the first token sent to the client.",
    ["provider"],
    buckets=TTFT_BUCKETS,
)
RATE_LIMIT_REJECTIONS = Counter(
    "llmwise_rate_limit_rejections",
    "Requests refused by a rate limit, by the error code the client saw.",
    ["limit"],
)
SETTLE_FAILURES = Counter(
    "llmwise_settle_failures",
    "Reservation settlements or releases that raised (the hold stays until the sweeper).",
    ["operation"],
)


# Labelled children by (metric, label values): ``labels()`` validates and locks on every call,
# which would double the cost of a request's few updates. The label sets are bounded.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _safe(hook: Callable[P, None]) -> Callable[P, None]:
    """A metrics bug must never fail the request, the settlement or the task it observes."""

    @functools.wraps(hook)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            logger.exception("metrics: %s failed", hook.__name__)

    return guarded


@_safe
def request_logged(row: RequestLog) -> None:
    """Count one gateway call from its request-log row (requests, errors, latencies)."""
    endpoint, model, provider = row.endpoint, row.model or "none", row.provider or "none"
    _child(GATEWAY_REQUESTS, endpoint, model, provider, row.status).inc()
    if row.status != "ok":
        _child(GATEWAY_ERRORS, endpoint, model, provider, row.error_type).inc()
        return
    upstream_ms = row.upstream_ms
    if row.ttft_ms is not None:  # a stream: the gateway's part ends at the first token
        _child(TIME_TO_FIRST_TOKEN, provider).observe(row.ttft_ms / MS_PER_SECOND)
        overhead_ms = row.ttft_ms - upstream_ms
    else:
        overhead_ms = row.latency_ms - upstream_ms
    _child(GATEWAY_OVERHEAD, endpoint).observe(max(overhead_ms, 0) / MS_PER_SECOND)
    if not row.cache_hit:
        stream = "true" if row.stream else "false"
        _child(UPSTREAM_LATENCY, provider, stream).observe(upstream_ms / MS_PER_SECOND)


def logs_requests(write: Callable[P, RequestLog]) -> Callable[P, RequestLog]:
    """Decorate the function that writes a request-log row: each row it returns is counted by
    :func:`request_logged` (one line at the call service, whatever its body looks like)."""

    @functools.wraps(write)
    def counted(*args: P.args, **kwargs: P.kwargs) -> RequestLog:
        row = write(*args, **kwargs)
        request_logged(row)
        return row

    return counted


@_safe
def http_response(request: HttpRequest, status_code: int) -> None:
    """Count one HTTP response (the request-id middleware calls this for every request)."""
    match = getattr(request, "resolver_match", None)
    view = (match.view_name or match.route or UNMATCHED_VIEW) if match else UNMATCHED_VIEW
    method = request.method if request.method in HTTP_METHODS else "other"
    _child(HTTP_RESPONSES, view, method, str(status_code)).inc()


@_safe
def rate_limit_rejected(limit: str) -> None:
    """Count one request refused by a rate limit (``limit``: the error code the client got)."""
    _child(RATE_LIMIT_REJECTIONS, limit).inc()


def counts_failures(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a money operation: each call that raises increments the settle-failures counter
    for ``operation``, and the exception goes on unchanged. An exception already counted by a
    decorated function it passed through (a fast path falling back to the ORM service) is not
    counted again."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                money_operation_failed(operation, exc)
                raise

        return counted

    return decorate


def money_operation_failed(operation: str, exc: Exception) -> None:
    """Count ``exc`` as a failure of ``operation`` (once, whichever layers it passes through)."""
    if not getattr(exc, COUNTED_MARK, False):
        _settle_failed(operation)
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, COUNTED_MARK, True)


@_safe
def _settle_failed(operation: str) -> None:
    SETTLE_FAILURES.labels(operation).inc()


@_safe
def task_failed(task_name: str) -> None:
    """Count one failed Celery task in the shared cache (Redis in the scale-out shape), where
    the web process's scrape reads it: workers often run in other containers."""
    from django.core.cache import cache

    key = TASK_FAILURES_CACHE_PREFIX + task_name
    cache.add(key, 0, timeout=None)
    try:
        cache.incr(key)
    except ValueError:  # evicted between add and incr
        cache.set(key, 1, timeout=None)


# --- state, read at scrape time -------------------------------------------------------------------
@dataclass
class _Scrape:
    """What one scrape read, as metric families, plus which sources answered."""

    families: list[Metric] = field(default_factory=list)
    sources: dict[str, bool] = field(default_factory=dict)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "llmwise_metrics_source_up",
            "Whether a source of the scrape-time metrics answered this scrape (1) or not (0).",
            labels=["source"],
        )
        for source, ok in self.sources.items():
            up.add_metric([source], 1.0 if ok else 0.0)
        yield from self.families
        yield up


def _reservations(scrape: _Scrape) -> None:
    from django.db.models import Count, Q
    from django.utils import timezone

    from apps.wallet.models import Reservation

    held = Reservation.objects.filter(status=Reservation.Status.HELD)
    counts = held.aggregate(
        open=Count("pk"), overdue=Count("pk", filter=Q(expires_at__lte=timezone.now()))
    )
    scrape.families.append(
        GaugeMetricFamily(
            "llmwise_reservations_open",
            "Credit holds not yet settled or released (calls in flight, or lost by a crash).",
            value=counts["open"],
        )
    )
    scrape.families.append(
        GaugeMetricFamily(
            "llmwise_reservations_overdue",
            "Holds past their expiry that the sweeper has not released yet (should stay 0).",
            value=counts["overdue"],
        )
    )


def _broker_queue_lengths() -> dict[str, int] | None:
    """Messages waiting per Celery queue on a Redis broker; None without one (the embedded
    default runs tasks in-process and has no queue)."""
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    from llmwise.celery import app

    names = sorted(app.amqp.queues.keys()) or [app.conf.task_default_queue]
    client = redis.Redis.from_url(
        url, socket_timeout=BROKER_TIMEOUT_SECONDS, socket_connect_timeout=BROKER_TIMEOUT_SECONDS
    )
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
            for step in KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{name}{KOMBU_PRIORITY_SEPARATOR}{step}")
        lengths = pipe.execute()
    finally:
        client.close()
    per_queue = 1 + len(KOMBU_PRIORITY_STEPS)
    return {
        name: sum(int(n) for n in lengths[i * per_queue : (i + 1) * per_queue])
        for i, name in enumerate(names)
    }


def _celery(scrape: _Scrape) -> None:
    try:
        lengths = _broker_queue_lengths()
    except Exception:
        logger.warning("metrics: the Celery broker did not answer", exc_info=True)
        scrape.sources["broker"] = False
    else:
        if lengths is not None:
            scrape.sources["broker"] = True
            family = GaugeMetricFamily(
                "llmwise_celery_queue_length",
                "Celery messages waiting in the broker, per queue.",
                labels=["queue"],
            )
            for name, length in lengths.items():
                family.add_metric([name], length)
            scrape.families.append(family)
    from django.core.cache import cache

    from llmwise.celery import app

    app.loader.import_default_modules()  # every app's tasks module, once per process
    names = sorted(name for name in app.tasks if not name.startswith("celery."))
    try:
        counts = cache.get_many([TASK_FAILURES_CACHE_PREFIX + name for name in names])
    except Exception:
        logger.warning("metrics: the cache did not answer", exc_info=True)
        scrape.sources["cache"] = False
        return
    scrape.sources["cache"] = True
    failures = CounterMetricFamily(
        "llmwise_celery_task_failures",
        "Celery tasks that raised, by task name (counted by whichever process ran them).",
        labels=["task"],
    )
    for name in names:
        failures.add_metric([name], int(counts.get(TASK_FAILURES_CACHE_PREFIX + name, 0)))
    scrape.families.append(failures)


def _scrape_sync(scrape: _Scrape) -> list[tuple[str, str]]:
    """The synchronous reads (database, broker, cache); returns the breaker targets."""
    from apps.gateway.selectors import catalog_enabled_cached

    targets: list[tuple[str, str]] = []
    try:
        _reservations(scrape)
        targets = [(model.provider, model.id) for model in catalog_enabled_cached()]
    except Exception:
        logger.warning("metrics: the database did not answer", exc_info=True)
        scrape.sources["database"] = False
    else:
        scrape.sources["database"] = True
    _celery(scrape)
    return targets


async def _breakers(scrape: _Scrape, targets: Iterable[tuple[str, str]]) -> None:
    from apps.gateway.routing.health import BreakerState, breaker_states

    try:
        states = await breaker_states(targets)
    except Exception:
        logger.warning("metrics: the shared counters did not answer", exc_info=True)
        scrape.sources["counters"] = False
        return
    scrape.sources["counters"] = True
    family = GaugeMetricFamily(
        "llmwise_circuit_breaker_state",
        "Circuit breaker of each provider and model: 1 for its current state, 0 for the others.",
        labels=["provider", "model", "state"],
    )
    for provider, model, current in states:
        for state in BreakerState:
            family.add_metric([provider, model, state.value], 1.0 if state is current else 0.0)
    scrape.families.append(family)


# --- the endpoint ---------------------------------------------------------------------------------
def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def _events_registry() -> Any:
    if multiprocess_mode():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may read the metrics; else the answer (see the settings)."""
    token: str = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token):
            return None
        response = HttpResponse("Unauthorized.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    local = _is_loopback(str(request.META.get("REMOTE_ADDR", "")))
    proxied = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    if settings.METRICS_ALLOW_LOOPBACK and local and not proxied:
        return None
    return HttpResponse("Not found.\n", status=404, content_type="text/plain")


@never_cache
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text format (token or loopback: see the settings)."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    refused = _refusal(request)
    if refused is not None:
        return refused
    started = time.perf_counter()
    scrape = _Scrape()
    targets = await sync_to_async(_scrape_sync)(scrape)
    await _breakers(scrape, targets)
    scrape.families.append(
        GaugeMetricFamily(
            "llmwise_metrics_scrape_seconds",
            "How long this scrape took to read its state metrics.",
            value=time.perf_counter() - started,
        )
    )
    body = generate_latest(_events_registry()) + generate_latest(scrape)
    # The classic text format (0.0.4): every Prometheus version reads it; our names need no more.
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
