"""Usage rollups: the incremental job against a direct aggregate of the request log.

Volume and shape cases write log rows directly (as the call service writes them); one test makes a
real call through /v1/chat/completions (sandbox provider over HTTP) and follows it to the rollup.
"""

from __future__ import annotations

import random
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Organization
from apps.gateway import analytics
from apps.gateway.models import (
    LATENCY_BUCKET_COUNT,
    RequestLog,
    RollupCursor,
    UsageBreakdownRollup,
    UsageRollup,
)
from apps.gateway.rollups import (
    COUNTERS,
    frontier_model,
    latency_bucket,
    latency_percentile,
    rollups_update,
)
from apps.gateway.sandbox import SandboxServer
from apps.gateway.tasks import rollups_update_task
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry
from tests.conftest import Personas
from tests.factories import org_with_owner
from tests.usage_factory import expected_breakdowns, expected_rollups, log_row

pytestmark = pytest.mark.usefixtures("catalog")

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two truly concurrent writers and FOR UPDATE SKIP LOCKED need PostgreSQL "
    "(SQLite serializes writers and ignores row locks)",
)


def _stored() -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in UsageRollup.objects.all():
        key = (
            row.organization_id,
            row.granularity,
            row.bucket_start.astimezone(UTC),
            row.model,
            row.provider,
            row.api_key_id,
            row.category,
            row.byok,
        )
        assert key not in out, f"duplicate rollup row {key}"
        out[key] = {name: getattr(row, name) for name in COUNTERS}
        out[key]["histogram"] = {int(i): c for i, c in row.latency_histogram.items()}
    return out


def _stored_breakdowns() -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
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
        assert key not in out, f"duplicate breakdown row {key}"
        out[key] = {name: getattr(row, name) for name in COUNTERS}
        out[key]["histogram"] = {int(i): c for i, c in row.latency_histogram.items()}
    return out


def _assert_match(
    stored: dict[tuple[Any, ...], dict[str, Any]], expected: dict[tuple[Any, ...], dict[str, Any]]
) -> None:
    assert set(stored) == set(expected)
    for key, sums in expected.items():
        latencies = sums.pop("latencies")
        got = dict(stored[key])
        histogram = got.pop("histogram")
        assert got == {name: sums.get(name, 0) for name in COUNTERS}, key
        # The histogram holds each latency exactly once, in its own bucket.
        counts: dict[int, int] = {}
        for latency in latencies:
            counts[latency_bucket(latency)] = counts.get(latency_bucket(latency), 0) + 1
        assert histogram == counts, key


def _assert_rollups_match_log() -> None:
    """Both rollup tables equal what the raw log adds up to, computed independently."""
    _assert_match(_stored(), expected_rollups(frontier_model()))
    _assert_match(_stored_breakdowns(), expected_breakdowns(frontier_model()))


def _keys(org: Organization, owner: Any, *names: str) -> list[ApiKey]:
    return [
        account_services.api_key_create(org=org, name=name, created_by=owner).api_key
        for name in names
    ]


def _mixed_traffic(personas: Personas) -> None:
    """Several orgs, keys and models; BYOK, errors, estimated usage, zero retention, auto."""
    acme_a, acme_b = _keys(personas.org, personas.owner, "backend", "batch")
    (globex,) = _keys(personas.other_org, personas.outsider, "globex")
    private = org_with_owner("Initech")
    private.zero_retention = True
    private.save()
    for i in range(12):
        log_row(
            personas.org,
            api_key=acme_a if i % 2 else acme_b,
            ago=timedelta(hours=1 + i * 5, minutes=i),  # spans hours and days
            prompt_tokens=100 + i,
            completion_tokens=50 + 3 * i,
            cached_tokens=i,
            reasoning_tokens=i % 3,
            cost_micros=1000 + i,
            latency_ms=80 + 40 * i,
            upstream_ms=70 + 40 * i,
        )
    log_row(
        personas.org,
        api_key=acme_a,
        byok=True,
        cost_micros=777,
        model="claude-haiku-4.5",
        provider="anthropic",
    )
    log_row(
        personas.org,
        api_key=acme_a,
        status=RequestLog.Status.ERROR,
        http_status=502,
        error_type="upstream_error",
        cost_micros=0,
        prompt_tokens=0,
        completion_tokens=0,
    )
    log_row(personas.org, api_key=None, usage_estimated=True, latency_ms=0)
    for category in ("coding", "coding", "summarize"):
        log_row(
            personas.org,
            api_key=acme_b,
            requested_model="auto",
            route={"requested": "auto", "chosen": "gpt-4o-mini", "category": category},
            prompt_tokens=1000,
            completion_tokens=400,
            cached_tokens=200,
            cost_micros=390,
        )
    log_row(personas.other_org, api_key=globex, model="gpt-4.1", cost_micros=5000)
    log_row(private, prompt_tokens=7, cost_micros=3, latency_ms=2_000_000)  # beyond the last edge


@pytest.mark.django_db
def test_rollups_equal_a_direct_aggregate_of_the_log(personas: Personas) -> None:
    _mixed_traffic(personas)
    logged = RequestLog.objects.count()
    assert rollups_update() == logged
    _assert_rollups_match_log()
    # BYOK rows cost what they would have cost but charge nothing.
    byok = UsageRollup.objects.get(organization=personas.org, granularity="day", byok=True)
    assert (byok.cost_micros, byok.charged_micros) == (777, 0)
    # Auto-routed rows carry the frontier comparison; the reference is a frontier model.
    reference = frontier_model()
    assert reference is not None
    assert reference.tier == "frontier"
    auto = UsageRollup.objects.filter(
        organization=personas.org, granularity="day", category="coding"
    )
    assert sum(r.auto_requests for r in auto) == 2
    assert sum(r.frontier_cost_micros for r in auto) > sum(r.auto_cost_micros for r in auto) > 0
    # Zero-retention rows count like any other (metadata only is all the rollup reads).
    assert UsageRollup.objects.filter(organization__name="Initech", granularity="hour").count() == 1


@pytest.mark.django_db
def test_incremental_runs_never_double_count(personas: Personas) -> None:
    _mixed_traffic(personas)
    first = rollups_update()
    for i in range(5):
        log_row(personas.org, ago=timedelta(minutes=5 + i), cost_micros=10 * i)
    log_row(personas.other_org, ago=timedelta(days=2), latency_ms=333)  # old timestamp, new id
    assert rollups_update() == 6
    assert rollups_update() == 0  # nothing new: nothing changes
    assert first + 6 == RequestLog.objects.count()
    _assert_rollups_match_log()
    cursor = RollupCursor.objects.get()
    assert cursor.last_id == RequestLog.objects.order_by("-id").values_list("id", flat=True)[0]


@pytest.mark.django_db
def test_small_batches_give_the_same_totals(personas: Personas) -> None:
    _mixed_traffic(personas)
    assert rollups_update(batch_size=3) == RequestLog.objects.count()
    _assert_rollups_match_log()
    with pytest.raises(ValueError, match="positive"):
        rollups_update(batch_size=0)


@pytest.mark.django_db
def test_rows_younger_than_the_lag_wait_for_a_later_run(personas: Personas, settings: Any) -> None:
    settings.ANALYTICS_ROLLUP_LAG_SECONDS = 60
    log_row(personas.org, ago=timedelta(minutes=5))
    fresh = log_row(personas.org, ago=timedelta(seconds=1))
    log_row(personas.org, ago=timedelta(minutes=10))  # a later id behind the fresh one waits too
    assert rollups_update() == 1
    assert RollupCursor.objects.get().last_id == fresh.id - 1
    settings.ANALYTICS_ROLLUP_LAG_SECONDS = 0
    assert rollups_update() == 2
    _assert_rollups_match_log()


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_count_every_row_once(personas: Personas) -> None:
    _mixed_traffic(personas)
    for i in range(300):
        log_row(personas.org, ago=timedelta(minutes=1 + i), latency_ms=i, cost_micros=i)
    total = RequestLog.objects.count()
    barrier = threading.Barrier(2)

    def run(_: int) -> int:
        try:
            barrier.wait(timeout=30)
            return rollups_update(batch_size=7)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(2)))
    # Whoever finds the cursor locked stops; whatever is left the next run picks up.
    assert sum(results) + rollups_update() == total
    _assert_rollups_match_log()


@pytest.mark.django_db
def test_celery_task_and_beat_entry(personas: Personas) -> None:
    log_row(personas.org)
    log_row(personas.org, status=RequestLog.Status.ERROR)
    assert rollups_update_task.delay().get() == 2
    assert rollups_update_task.delay().get() == 0
    _assert_rollups_match_log()
    entry = django_settings.CELERY_BEAT_SCHEDULE["gateway-rollups-update"]
    assert entry == {"task": "apps.gateway.tasks.rollups_update_task", "schedule": 60.0}


@pytest.mark.django_db
def test_command_updates_and_rebuilds(personas: Personas) -> None:
    _mixed_traffic(personas)
    out = StringIO()
    call_command("rollups_update", stdout=out)
    assert f"Folded {RequestLog.objects.count()} new log rows" in out.getvalue()
    # Damage Acme's and Globex's rollups; rebuilding Acme restores it and leaves Globex alone.
    UsageRollup.objects.filter(organization=personas.org).update(requests=999, cost_micros=0)
    UsageRollup.objects.filter(organization=personas.other_org).update(requests=5)
    UsageBreakdownRollup.objects.filter(organization=personas.org).update(errors=7)
    UsageBreakdownRollup.objects.filter(organization=personas.org, dimension="total").delete()
    out = StringIO()
    call_command("rollups_update", "--rebuild", "--org", personas.org.slug, stdout=out)
    acme_rows = RequestLog.objects.filter(organization=personas.org).count()
    assert f"organization {personas.org.slug}: {acme_rows} log rows" in out.getvalue()
    assert set(
        UsageRollup.objects.filter(organization=personas.other_org).values_list(
            "requests", flat=True
        )
    ) == {5}
    # Acme's breakdowns are whole again; Globex's rows were left alone.
    acme = personas.org.pk
    _assert_match(
        {k: v for k, v in _stored_breakdowns().items() if k[0] == acme},
        {k: v for k, v in expected_breakdowns(frontier_model()).items() if k[0] == acme},
    )
    call_command("rollups_update", "--rebuild", stdout=StringIO())
    _assert_rollups_match_log()
    with pytest.raises(CommandError, match="No organization"):
        call_command("rollups_update", "--rebuild", "--org", "nope", stdout=StringIO())
    with pytest.raises(CommandError, match="only applies"):
        call_command("rollups_update", "--org", personas.org.slug, stdout=StringIO())
    with pytest.raises(CommandError, match="positive"):
        call_command("rollups_update", "--batch-size", "0", stdout=StringIO())


@pytest.mark.django_db
def test_percentiles_from_the_histogram_are_within_ten_percent(personas: Personas) -> None:
    rng = random.Random(9)
    latencies = [int(rng.lognormvariate(6.0, 0.8)) + 1 for _ in range(2000)]
    for i, latency in enumerate(latencies):
        log_row(personas.org, ago=timedelta(hours=1 + i % 40), latency_ms=latency)
    rollups_update()
    window = analytics.analytics_window(range_key="7d", granularity="day")
    totals = analytics.usage_overview(org=personas.org, window=window).totals
    ordered = sorted(latencies)
    true_p50 = statistics.median(ordered)
    true_p95 = ordered[int(0.95 * len(ordered)) - 1]
    assert totals["p50_ms"] == pytest.approx(true_p50, rel=0.10)
    assert totals["p95_ms"] == pytest.approx(true_p95, rel=0.10)
    assert totals["requests"] == len(latencies)


def test_histogram_buckets_and_percentiles() -> None:
    edges = [latency_bucket(ms) for ms in (0, 1, 2, 3, 10, 100, 1000, 60_000, 10**7)]
    assert edges == sorted(edges)
    assert edges[0] == 0
    assert edges[-1] == LATENCY_BUCKET_COUNT - 1
    assert latency_percentile({}, 0.5) is None
    one = latency_percentile({latency_bucket(500): 1}, 0.5)
    assert one == pytest.approx(500, rel=0.10)


@pytest.mark.django_db
def test_a_real_call_reaches_the_rollups_with_what_was_charged(
    personas: Personas, settings: Any, sandbox: SandboxServer
) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.ANALYTICS_ROLLUP_LAG_SECONDS = 0
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="test funds")
    issued = account_services.api_key_create(
        org=personas.org, name="backend", created_by=personas.owner
    )
    response = Client().post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {issued.secret}",
    )
    assert response.status_code == 200, response.content
    assert rollups_update() == 1
    charge = LedgerEntry.objects.get(kind=LedgerEntry.Kind.CHARGE)
    row = UsageRollup.objects.get(organization=personas.org, granularity="hour")
    assert row.charged_micros == -charge.amount_micros == int(response["x-llmwise-cost-micros"])
    assert row.api_key_id == issued.api_key.pk
    assert row.requests == 1
    logged_at = RequestLog.objects.get().created_at.astimezone(UTC)
    assert row.bucket_start == logged_at.replace(minute=0, second=0, microsecond=0)
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
def test_the_logged_category_column_wins_over_the_route(personas: Personas) -> None:
    log_row(personas.org, category="code", route={"category": "qa"})
    log_row(personas.org, route={"category": "translation"})  # logged before the column existed
    rollups_update()
    categories = set(
        UsageRollup.objects.filter(organization=personas.org).values_list("category", flat=True)
    )
    assert categories == {"code", "translation"}
    breakdown_categories = set(
        UsageBreakdownRollup.objects.filter(
            organization=personas.org, dimension=UsageBreakdownRollup.Dimension.CATEGORY
        ).values_list("category", flat=True)
    )
    assert breakdown_categories == {"code", "translation"}
    _assert_rollups_match_log()
