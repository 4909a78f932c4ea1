"""The Overview's breakdown rollups against the raw request log.

Every number the Overview shows for a window (totals, the series per bucket, the tables per
model, API key and task category, auto-routing savings, latency percentiles) is recomputed here
straight from ``RequestLog`` rows and compared with what :func:`analytics.usage_overview` reads
from :class:`UsageBreakdownRollup`. The job itself runs for real (``rollups_update``), on
traffic that spans hours, days, orgs, keys, BYOK, errors and auto-routing.
"""

from __future__ import annotations

import importlib
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Organization
from apps.gateway import analytics
from apps.gateway.models import RequestLog, UsageBreakdownRollup
from apps.gateway.rollups import (
    COUNTERS,
    frontier_model,
    latency_bucket,
    latency_percentile,
    rollups_update,
)
from tests.conftest import Personas
from tests.usage_factory import expected_breakdowns, log_row

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("claude-haiku-4.5", "anthropic"),
    ("gemini-2.5-flash", "gemini"),
]
CATEGORIES = ["coding", "summarize", "qa", ""]


def _traffic(personas: Personas, *, rows: int = 240, seed: int = 9) -> list[ApiKey]:
    """``rows`` log rows for Acme over the last 31 days, a few for Globex, all shapes mixed."""
    rng = random.Random(seed)
    keys = [
        account_services.api_key_create(
            org=personas.org, name=name, created_by=personas.owner
        ).api_key
        for name in ("backend", "batch")
    ]
    for i in range(rows):
        model, provider = rng.choice(MODELS)
        auto = rng.random() < 0.3
        error = rng.random() < 0.05
        category = rng.choice(CATEGORIES) if auto else ""
        prompt_tokens = 0 if error else rng.randrange(10, 3000)
        log_row(
            personas.org,
            api_key=rng.choice([*keys, None]),
            # Half dense over the last ~1.5 days, half spread over ~31 days (beyond the 30d view).
            ago=timedelta(minutes=5 + (i * 17 if i % 2 else i * 185)),
            model=model,
            provider=provider,
            requested_model="auto" if auto else model,
            route={"requested": "auto" if auto else model, "chosen": model}
            | ({"category": category} if category else {}),
            category=category if i % 2 else "",  # half only in the route, like older rows
            status=RequestLog.Status.ERROR if error else RequestLog.Status.OK,
            http_status=502 if error else 200,
            byok=provider == "anthropic" and rng.random() < 0.5,
            prompt_tokens=prompt_tokens,
            completion_tokens=0 if error else rng.randrange(5, 900),
            cached_tokens=min(prompt_tokens, rng.randrange(0, 10)),
            cost_micros=0 if error else rng.randrange(1, 50_000),
            latency_ms=int(rng.lognormvariate(6.3, 0.7)),
            upstream_ms=rng.randrange(0, 500),
        )
    for i in range(5):
        log_row(personas.other_org, ago=timedelta(hours=1 + i), model="gpt-4.1", cost_micros=999)
    return keys


def _category(log: RequestLog) -> str:
    if log.category:
        return log.category
    return log.route.get("category", "") if isinstance(log.route, dict) else ""


def _bucket(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


def _from_log(org: Organization, window: analytics.AnalyticsWindow) -> dict[str, Any]:
    """What the Overview should show for ``window``, added up from the raw log."""
    reference = frontier_model()
    assert reference is not None
    logs = RequestLog.objects.filter(
        organization=org, created_at__gte=window.start, created_at__lt=window.end
    ).order_by("id")

    def empty() -> dict[str, Any]:
        return {"requests": 0, "errors": 0, "cost": 0, "charged": 0, "tokens": 0, "lat": []}

    total = empty()
    series: dict[datetime, dict[str, Any]] = {bucket: empty() for bucket in window.buckets}
    models: dict[str, dict[str, Any]] = defaultdict(empty)
    keys: dict[int | None, dict[str, Any]] = defaultdict(empty)
    categories: dict[str, dict[str, Any]] = defaultdict(empty)
    auto_requests = auto_cost = frontier_cost = 0
    for log in logs:
        for sums in (
            total,
            series[_bucket(log.created_at, window.granularity)],
            models[log.model],
            keys[log.api_key_id],
            categories[_category(log) or "Uncategorized"],
        ):
            sums["requests"] += 1
            sums["errors"] += log.status == RequestLog.Status.ERROR
            sums["cost"] += log.cost_micros
            sums["charged"] += 0 if log.byok else log.cost_micros
            sums["tokens"] += log.prompt_tokens + log.completion_tokens
            sums["lat"].append(log.latency_ms)
        if log.requested_model == "auto":
            auto_requests += 1
            auto_cost += log.cost_micros
            frontier_cost += -(
                -(
                    (log.prompt_tokens - log.cached_tokens) * reference.input_price_micros_per_mtok
                    + log.cached_tokens
                    * (
                        reference.cached_input_price_micros_per_mtok
                        if reference.cached_input_price_micros_per_mtok is not None
                        else reference.input_price_micros_per_mtok
                    )
                    + log.completion_tokens * reference.output_price_micros_per_mtok
                )
                // 1_000_000
            )
    return {
        "total": total,
        "series": series,
        "models": dict(models),
        "keys": dict(keys),
        "categories": dict(categories),
        "savings": (auto_requests, auto_cost, frontier_cost),
    }


def _percentile(latencies: list[int], quantile: float) -> int | None:
    """The estimate the page must show: the same histogram estimate over the raw latencies."""
    histogram: dict[int, int] = defaultdict(int)
    for latency in latencies:
        histogram[latency_bucket(latency)] += 1
    value = latency_percentile(histogram, quantile)
    return None if value is None else round(value)


def _assert_stats(shown: dict[str, Any], expected: dict[str, Any], *, where: str) -> None:
    assert shown["requests"] == expected["requests"], where
    assert shown["errors"] == expected["errors"], where
    assert shown["cost_micros"] == expected["cost"], where
    assert shown["charged_micros"] == expected["charged"], where
    assert shown["tokens"] == expected["tokens"], where


WINDOWS = [
    (key, granularity)
    for key, (_hours, allowed) in analytics.RANGES.items()
    for granularity in allowed
]


def _yesterday_at(hour: int, minute: int = 30) -> datetime:
    today = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1) + timedelta(hours=hour, minutes=minute)


@pytest.mark.parametrize(("range_key", "granularity"), WINDOWS)
def test_every_overview_window_equals_the_raw_log(
    personas: Personas, range_key: str, granularity: str
) -> None:
    _assert_window_equals_the_raw_log(personas, range_key, granularity, now=None)


@pytest.mark.parametrize("hour", [0, 5, 23])
@pytest.mark.parametrize("range_key", ["24h", "7d", "30d"])
def test_hourly_windows_on_day_edges_equal_the_raw_log(
    personas: Personas, range_key: str, hour: int
) -> None:
    """Hourly windows read whole days from day rows and the edges from hour rows: a window
    ending in the first or last hour of a day (nothing or everything at one edge) adds up too."""
    _assert_window_equals_the_raw_log(personas, range_key, "hour", now=_yesterday_at(hour))


def test_spans_tile_the_window_exactly() -> None:
    for hours_back in range(0, 48):
        now = datetime(2026, 3, 10, 12, 30, tzinfo=UTC) - timedelta(hours=hours_back)
        for range_key, granularity in WINDOWS:
            window = analytics.analytics_window(
                range_key=range_key, granularity=granularity, now=now
            )
            covered: list[datetime] = []
            for span_granularity, start, end in analytics._spans(window):
                step = timedelta(days=1) if span_granularity == "day" else timedelta(hours=1)
                assert start.hour == 0 or span_granularity == "hour"
                hour = start
                while hour < end:
                    covered.append(hour)
                    hour += timedelta(hours=1)
                assert (end - start) % step == timedelta(0)
            expected = []
            hour = window.start
            while hour < window.end:
                expected.append(hour)
                hour += timedelta(hours=1)
            assert sorted(covered) == expected, (range_key, granularity, now)


def _assert_window_equals_the_raw_log(
    personas: Personas, range_key: str, granularity: str, *, now: datetime | None
) -> None:
    keys = _traffic(personas)
    rollups_update()
    window = analytics.analytics_window(range_key=range_key, granularity=granularity, now=now)
    assert window.granularity == granularity
    shown = analytics.usage_overview(org=personas.org, window=window)
    expected = _from_log(personas.org, window)
    assert expected["total"]["requests"] > 3, "the window should hold traffic"

    _assert_stats(shown.totals, expected["total"], where="totals")
    assert shown.totals["p50_ms"] == _percentile(expected["total"]["lat"], 0.50)
    assert shown.totals["p95_ms"] == _percentile(expected["total"]["lat"], 0.95)

    assert [point["bucket"] for point in shown.series] == list(window.buckets)
    for point in shown.series:
        bucket = expected["series"][point["bucket"]]
        _assert_stats(point, bucket, where=f"bucket {point['bucket']}")
        assert point["p95_ms"] == _percentile(bucket["lat"], 0.95), point["bucket"]

    assert {row["model"] for row in shown.models} == set(expected["models"])
    for row in shown.models:
        model = expected["models"][row["model"]]
        _assert_stats(row, model, where=row["model"])
        assert row["p50_ms"] == _percentile(model["lat"], 0.50), row["model"]
        assert row["p95_ms"] == _percentile(model["lat"], 0.95), row["model"]

    names = {key.pk: key.name for key in keys} | {None: "No API key (dashboard)"}
    assert {row["name"] for row in shown.keys} == {names[k] for k in expected["keys"]}
    for row in shown.keys:
        _assert_stats(row, expected["keys"][row["api_key_id"]], where=row["name"])

    assert {row["category"] for row in shown.categories} == set(expected["categories"])
    for row in shown.categories:
        category = expected["categories"][row["category"]]
        _assert_stats(row, category, where=row["category"])
        assert row["p95_ms"] == _percentile(category["lat"], 0.95), row["category"]

    savings = shown.savings
    assert (
        savings.auto_requests,
        savings.auto_cost_micros,
        savings.frontier_cost_micros,
    ) == expected["savings"]


def test_breakdown_rows_equal_the_raw_log_after_incremental_runs(personas: Personas) -> None:
    """Run after run, in small batches, with late rows landing in old buckets."""
    _traffic(personas, rows=60)
    assert rollups_update(batch_size=7) == RequestLog.objects.count()
    for i in range(10):
        log_row(personas.org, ago=timedelta(days=i % 3, minutes=3 + i), latency_ms=40 + i)
    assert rollups_update(batch_size=4) == 10
    stored: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in UsageBreakdownRollup.objects.all():
        key = (
            row.organization_id,
            row.granularity,
            row.bucket_start.astimezone(UTC),
            row.dimension,
            row.model,
            row.provider,
            row.api_key_id,
            row.category,
        )
        stored[key] = {name: getattr(row, name) for name in COUNTERS}
        stored[key]["histogram"] = {int(i): c for i, c in row.latency_histogram.items()}
    expected = expected_breakdowns(frontier_model())
    assert set(stored) == set(expected)
    for key, sums in expected.items():
        histogram: dict[int, int] = defaultdict(int)
        for latency in sums.pop("latencies"):
            histogram[latency_bucket(latency)] += 1
        assert stored[key].pop("histogram") == histogram, key
        assert stored[key] == {name: sums.get(name, 0) for name in COUNTERS}, key
    # Each bucket's total row is the sum of its model rows, of its key rows, of its category rows.
    per_bucket: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (org_id, granularity, start, dimension, *_rest), sums in stored.items():
        per_bucket[(org_id, granularity, start)][dimension] += sums["requests"]
    for dimensions in per_bucket.values():
        assert dimensions["total"] == dimensions["model"] == dimensions["key"]
        assert dimensions["total"] == dimensions["category"]


def test_the_migration_backfill_projects_the_existing_rollups(personas: Personas) -> None:
    """Deployments that had only the full rollups get the same breakdowns the job writes."""
    _traffic(personas, rows=80)
    rollups_update()
    written = sorted(
        UsageBreakdownRollup.objects.values_list(
            "organization_id",
            "granularity",
            "bucket_start",
            "dimension",
            "model",
            "provider",
            "api_key_id",
            "category",
            "latency_histogram",
            *COUNTERS,
        ),
        key=repr,
    )
    UsageBreakdownRollup.objects.all().delete()
    migration = importlib.import_module("apps.gateway.migrations.0011_usage_breakdown_rollups")
    migration.backfill_breakdowns(django_apps, None)
    backfilled = sorted(
        UsageBreakdownRollup.objects.values_list(
            "organization_id",
            "granularity",
            "bucket_start",
            "dimension",
            "model",
            "provider",
            "api_key_id",
            "category",
            "latency_histogram",
            *COUNTERS,
        ),
        key=repr,
    )
    assert backfilled == written
    assert len(written) > 50


def test_the_overview_page_reads_only_the_breakdowns(personas: Personas) -> None:
    _traffic(personas, rows=40)
    rollups_update()
    client = personas.client(personas.owner)
    for params in ({"range": "7d", "granularity": "hour"}, {"range": "30d"}):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("dashboard:overview"), params)
        assert response.status_code == 200
        tables = " ".join(q["sql"] for q in queries.captured_queries)
        assert "gateway_requestlog" not in tables
        assert '"gateway_usagerollup"' not in tables
        reads = [q for q in queries.captured_queries if "gateway_usagebreakdownrollup" in q["sql"]]
        assert len(reads) == 2, [q["sql"][:120] for q in reads]  # the window + the burn rate
