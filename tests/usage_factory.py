"""Request-log rows for analytics tests, shaped like the ones the call service writes."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from apps.accounts.models import ApiKey, Organization
from apps.gateway.models import CatalogModel, RequestLog

_ids = itertools.count(1)


def log_row(
    org: Organization,
    *,
    api_key: ApiKey | None = None,
    ago: timedelta = timedelta(hours=2),
    **fields: Any,
) -> RequestLog:
    """A log row ``ago`` in the past (older than the rollup lag); any field can be overridden."""
    n = next(_ids)
    model = fields.get("model", "gpt-4o-mini")
    values: dict[str, Any] = {
        "organization": org,
        "api_key": api_key,
        "request_id": f"req_usage{n:07d}",
        "endpoint": "openai.chat",
        "requested_model": model,
        "model": model,
        "provider": "openai",
        "status": RequestLog.Status.OK,
        "http_status": 200,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_micros": 150,
        "latency_ms": 120,
        "upstream_ms": 100,
        "route": {"requested": model, "chosen": model, "reason": "requested"},
        "prompt": None if org.zero_retention else [{"role": "user", "content": f"q {n}"}],
        "completion": "" if org.zero_retention else f"answer {n}",
        "created_at": timezone.now() - ago,
    }
    values.update(fields)
    return RequestLog.objects.create(**values)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _frontier_cost(log: RequestLog, frontier: CatalogModel | None) -> int:
    if frontier is None:
        return 0
    cached_price = frontier.cached_input_price_micros_per_mtok
    if cached_price is None:
        cached_price = frontier.input_price_micros_per_mtok
    return _ceil_div(
        (log.prompt_tokens - log.cached_tokens) * frontier.input_price_micros_per_mtok
        + log.cached_tokens * cached_price
        + log.completion_tokens * frontier.output_price_micros_per_mtok,
        1_000_000,
    )


def _category(log: RequestLog) -> str:
    # The logged column wins; rows logged before it existed carry the category in the route.
    if log.category:
        return log.category[:40]
    return log.route.get("category", "") if isinstance(log.route, dict) else ""


def _is_auto(log: RequestLog) -> bool:
    route = log.route if isinstance(log.route, dict) else {}
    return log.requested_model == "auto" or route.get("requested") == "auto"


def _buckets(log: RequestLog) -> tuple[tuple[str, datetime], tuple[str, datetime]]:
    created = log.created_at.astimezone(UTC)
    hour = datetime(created.year, created.month, created.day, created.hour, tzinfo=UTC)
    day = datetime(created.year, created.month, created.day, tzinfo=UTC)
    return ("hour", hour), ("day", day)


def _add(sums: dict[str, Any], log: RequestLog, *, auto: bool, frontier_cost: int) -> None:
    sums["requests"] += 1
    sums["errors"] += log.status == RequestLog.Status.ERROR
    sums["prompt_tokens"] += log.prompt_tokens
    sums["completion_tokens"] += log.completion_tokens
    sums["cached_tokens"] += log.cached_tokens
    sums["reasoning_tokens"] += log.reasoning_tokens
    sums["cost_micros"] += log.cost_micros
    sums["charged_micros"] += 0 if log.byok else log.cost_micros
    sums["latency_ms_sum"] += log.latency_ms
    sums["upstream_ms_sum"] += log.upstream_ms
    sums["estimated_usage"] += log.usage_estimated
    sums["auto_requests"] += auto
    sums["auto_cost_micros"] += log.cost_micros if auto else 0
    sums["frontier_cost_micros"] += frontier_cost if auto else 0
    sums["latencies"].append(log.latency_ms)


def _sums() -> defaultdict[tuple[Any, ...], dict[str, Any]]:
    return defaultdict(lambda: defaultdict(int, latencies=[]))  # type: ignore[arg-type]


def expected_rollups(frontier: CatalogModel | None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rollups recomputed straight from every RequestLog row, independently of the service:
    {(org id, granularity, bucket start, model, provider, key id, category, byok): sums}."""
    out = _sums()
    for log in RequestLog.objects.order_by("id"):
        auto = _is_auto(log)
        frontier_cost = _frontier_cost(log, frontier) if auto else 0
        for granularity, start in _buckets(log):
            key = (
                log.organization_id,
                granularity,
                start,
                log.model,
                log.provider,
                log.api_key_id,
                _category(log),
                log.byok,
            )
            _add(out[key], log, auto=auto, frontier_cost=frontier_cost)
    return {key: dict(value) for key, value in out.items()}


def expected_breakdowns(frontier: CatalogModel | None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The Overview's breakdown rollups recomputed straight from every RequestLog row:
    {(org id, granularity, bucket start, dimension, model, provider, key id, category): sums},
    one "total" row per bucket and one row per model, API key and category seen in it."""
    out = _sums()
    for log in RequestLog.objects.order_by("id"):
        auto = _is_auto(log)
        frontier_cost = _frontier_cost(log, frontier) if auto else 0
        for granularity, start in _buckets(log):
            base = (log.organization_id, granularity, start)
            for key in (
                (*base, "total", "", "", None, ""),
                (*base, "model", log.model, log.provider, None, ""),
                (*base, "key", "", "", log.api_key_id, ""),
                (*base, "category", "", "", None, _category(log)),
            ):
                _add(out[key], log, auto=auto, frontier_cost=frontier_cost)
    return {key: dict(value) for key, value in out.items()}
