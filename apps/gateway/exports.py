"""The request log as CSV rows: the Usage page's download and the organization's data export
(``apps.dashboard.exports``) write the same columns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from apps.wallet.models import format_usd
from llmwise.csv_export import csv_safe

from .models import RequestLog

REQUEST_LOG_CSV_HEADER = [
    "created_at",
    "request_id",
    "endpoint",
    "api_key_name",
    "api_key_prefix",
    "requested_model",
    "model",
    "provider",
    "status",
    "http_status",
    "error_type",
    "error_code",
    "finish_reason",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_micros",
    "cost_usd",
    "charged_micros",
    "byok",
    "latency_ms",
    "upstream_ms",
    "zero_retention",
    "prompt",
    "completion",
]


def request_log_csv_rows(logs: Iterable[RequestLog]) -> Iterator[list[str]]:
    """The header, then one row per log row: metadata, and the texts unless they were never
    stored (zero retention). Every cell a client could choose is formula-safe."""
    yield REQUEST_LOG_CSV_HEADER
    for log in logs:
        zero_retention = log.prompt is None
        key = log.api_key
        yield [
            log.created_at.isoformat(),
            csv_safe(log.request_id),
            csv_safe(log.endpoint),
            csv_safe(key.name) if key else "",
            csv_safe(key.prefix) if key else "",
            csv_safe(log.requested_model),
            csv_safe(log.model),
            csv_safe(log.provider),
            log.status,
            str(log.http_status),
            csv_safe(log.error_type),
            csv_safe(log.error_code),
            csv_safe(log.finish_reason),
            str(log.stream).lower(),
            str(log.prompt_tokens),
            str(log.completion_tokens),
            str(log.cached_tokens),
            str(log.reasoning_tokens),
            str(log.usage_estimated).lower(),
            str(log.cost_micros),
            format_usd(log.cost_micros),
            str(0 if log.byok else log.cost_micros),
            str(log.byok).lower(),
            str(log.latency_ms),
            str(log.upstream_ms),
            str(zero_retention).lower(),
            "" if zero_retention else csv_safe(json.dumps(log.prompt, ensure_ascii=False)),
            "" if zero_retention else csv_safe(log.completion),
        ]
