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


def expected_rollups(frontier: CatalogModel | None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rollups recomputed straight from every RequestLog row, independently of the service:
    {(org id, granularity, bucket start, model, provider, key id, category, byok): sums}."""
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: defaultdict(int, latencies=[])  # type: ignore[arg-type]
    )
    for log in RequestLog.objects.order_by("id"):
        created = log.created_at.astimezone(UTC)
        hour = datetime(created.year, created.month, created.day, created.hour, tzinfo=UTC)
        day = datetime(created.year, created.month, created.day, tzinfo=UTC)
        category = log.route.get("category", "") if isinstance(log.route, dict) else ""
        auto = log.requested_model == "auto" or log.route.get("requested") == "auto"
        frontier_cost = 0
        if auto and frontier is not None:
            cached_price = frontier.cached_input_price_micros_per_mtok
            if cached_price is None:
                cached_price = frontier.input_price_micros_per_mtok
            frontier_cost = _ceil_div(
                (log.prompt_tokens - log.cached_tokens) * frontier.input_price_micros_per_mtok
                + log.cached_tokens * cached_price
                + log.completion_tokens * frontier.output_price_micros_per_mtok,
                1_000_000,
            )
        for granularity, start in (("hour", hour), ("day", day)):
            key = (
                log.organization_id,
                granularity,
                start,
                log.model,
                log.provider,
                log.api_key_id,
                category,
                log.byok,
            )
            sums = out[key]
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
            sums["frontier_cost_micros"] += frontier_cost
            sums["latencies"].append(log.latency_ms)
    return {key: dict(value) for key, value in out.items()}
