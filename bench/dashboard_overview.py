"""Benchmark: the Overview page over 1,000,000 request-log rows (issue 9: < 300 ms).

    .venv/bin/python bench/dashboard_overview.py [--rows 1000000] [--requests 20] [--reuse]

1. (Re)creates the PostgreSQL database ``llmwise_bench_dash`` on 127.0.0.1 and migrates it.
2. Generates ``--rows`` request-log rows for one organization with COPY: 30 days, a daily traffic
   curve, 6 models, 4 API keys plus keyless rows, auto-routed requests with task categories, BYOK
   rows, ~2% errors, log-normal latencies. ``--reuse`` keeps an existing database and its rows.
3. Runs the rollup job from scratch (``rollups_rebuild``) and reports time and rows/s, then the
   incremental cost of one minute of heavy traffic (10,000 new rows).
4. Times GET /dashboard/ for every range the page offers (24h by hour, 7d and 30d by day and by
   hour) with Django's test Client, logged in as the owner, cold (overview cache emptied before
   each request) and warm, and prints p50/p95 against the 300 ms target.

Settings: the embedded default's settings (``llmwise.settings.dev``) with DEBUG off, PostgreSQL
from DATABASE_URL (default below); no Redis needed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DB_NAME = "llmwise_bench_dash"
PG = ["-h", "127.0.0.1", "-U", "postgres"]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
os.environ["DJANGO_SETTINGS_MODULE"] = "llmwise.settings.dev"
os.environ["DEBUG"] = "false"  # no query log, production-like templates
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.pop("REDIS_URL", None)

OWNER_EMAIL = "bench-owner@example.com"
BENCH_PASSWORD = "bench-password-1234"  # noqa: S105 - a throwaway local database
DAYS = 30
TARGET_MS = 300.0
# Every view the Overview's range selector offers (label, query string).
VIEWS = [
    ("24h by hour", "range=24h&granularity=hour"),
    ("7d by day", "range=7d&granularity=day"),
    ("7d by hour", "range=7d&granularity=hour"),
    ("30d by day", "range=30d&granularity=day"),
    ("30d by hour", "range=30d&granularity=hour"),
]
# (model id, share of traffic, median latency ms); ids from the seeded catalog.
MODELS = [
    ("gpt-4o-mini", 0.35, 700),
    ("gpt-4.1", 0.15, 1600),
    ("claude-haiku-4.5", 0.15, 900),
    ("claude-sonnet-4.5", 0.10, 2200),
    ("gemini-2.5-flash", 0.15, 600),
    ("deepseek-chat", 0.10, 1300),
]
CATEGORIES = ["coding", "summarize", "classify", "chat", "extraction"]
AUTO_SHARE = 0.3
BYOK_PROVIDER = "anthropic"
BYOK_SHARE = 0.3  # of that provider's calls
ERROR_SHARE = 0.02


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _database(reuse: bool) -> None:
    databases = subprocess.run(
        ["psql", *PG, "-Atc", "SELECT datname FROM pg_database"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    exists = DB_NAME in databases
    if exists and not reuse:
        subprocess.run(["dropdb", *PG, DB_NAME], check=True)
        exists = False
    if not exists:
        subprocess.run(["createdb", *PG, DB_NAME], check=True)


def _setup() -> tuple[Any, Any, list[Any]]:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from apps.accounts import services as accounts
    from apps.accounts.models import ApiKey, Membership, User
    from apps.wallet import services as wallet

    owner = User.objects.filter(email=OWNER_EMAIL).first()
    if owner is None:
        owner = User.objects.create_user(email=OWNER_EMAIL, password=BENCH_PASSWORD)
        org = accounts.organization_create(name="Bench Corp", owner=owner)
        for name in ("backend", "batch-jobs", "support-bot", "analytics"):
            accounts.api_key_create(org=org, name=name, created_by=owner)
        wallet.wallet_grant(
            wallet=wallet.wallet_for_org(org=org), amount_micros=500_000_000, note="bench"
        )
    org = Membership.objects.get(user=owner).organization
    keys = list(ApiKey.objects.filter(organization=org).order_by("id"))
    return owner, org, keys


def _copy_rows(org: Any, keys: list[Any], count: int, *, start: datetime, span: timedelta) -> None:
    """COPY ``count`` rows with created_at spread over ``span`` from ``start``, in id order."""
    from django.db import connection

    from apps.gateway.models import CatalogModel, RequestLog
    from apps.gateway.pricing import cost_micros
    from apps.gateway.providers.base import Usage

    rng = random.Random(count)
    catalog = {m.id: m for m in CatalogModel.objects.filter(id__in=[m[0] for m in MODELS])}
    missing = {m[0] for m in MODELS} - set(catalog)
    if missing:
        raise SystemExit(f"catalog lacks {missing}")
    # A daily curve (busiest in the UTC afternoon) over whole days; short spans are uniform.
    whole_days = int(span.total_seconds() // 86_400)
    hour_weights = [1 + 0.8 * math.sin((h - 9) / 24 * 2 * math.pi) for h in range(24)]

    def stamp() -> datetime:
        if whole_days < 1:
            return start + span * rng.random()
        while True:
            hour = rng.choices(range(24), hour_weights)[0]
            offset = timedelta(days=rng.randrange(whole_days + 1), hours=hour + rng.random())
            if offset < span:
                return start + offset

    stamps = sorted(stamp() for _ in range(count))
    fields = [f for f in RequestLog._meta.concrete_fields if not f.primary_key]
    names = [str(f.column) for f in fields]
    defaults = {f.attname: f.get_default() for f in fields}
    key_ids: list[int | None] = [k.pk for k in keys] + [None]
    models = [m[0] for m in MODELS]
    weights = [m[1] for m in MODELS]
    medians = {m[0]: m[2] for m in MODELS}
    prefix = f"bench{int(time.time())}"
    sql = f"COPY {RequestLog._meta.db_table} ({', '.join(names)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for i, created in enumerate(stamps):
            model_id = rng.choices(models, weights)[0]
            model = catalog[model_id]
            auto = rng.random() < AUTO_SHARE
            error = rng.random() < ERROR_SHARE
            prompt = 0 if error else int(rng.lognormvariate(6.5, 0.9))
            completion = 0 if error else int(rng.lognormvariate(5.5, 0.8))
            cached = prompt // 3 if rng.random() < 0.2 else 0
            usage = Usage(prompt, completion, cached_tokens=cached)
            byok = model.provider == BYOK_PROVIDER and rng.random() < BYOK_SHARE
            latency = max(1, int(rng.lognormvariate(math.log(medians[model_id]), 0.5)))
            route: dict[str, Any] = {
                "requested": "auto" if auto else model_id,
                "chosen": model_id,
                "reason": "auto" if auto else "requested",
            }
            if auto:
                route["category"] = rng.choice(CATEGORIES)
            row = dict(defaults)
            row.update(
                organization_id=org.pk,
                api_key_id=rng.choice(key_ids),
                request_id=f"{prefix}_{i:08d}",
                endpoint="openai.chat",
                requested_model="auto" if auto else model_id,
                model=model_id,
                provider=model.provider,
                status=RequestLog.Status.ERROR if error else RequestLog.Status.OK,
                http_status=502 if error else 200,
                error_type="upstream_error" if error else "",
                finish_reason="" if error else "stop",
                stream=rng.random() < 0.5,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                cost_micros=0 if error else cost_micros(model=model, usage=usage),
                byok=byok,
                latency_ms=latency,
                upstream_ms=max(0, latency - 2),
                route=route,
                prompt=None,  # metadata only: the analytics never read the texts
                completion="",
                created_at=created,
            )
            copy.write_row([f.get_db_prep_save(row[f.attname], connection) for f in fields])


def _time_view(client: Any, path: str, requests: int, *, cold: bool) -> tuple[float, float, int]:
    """p50/p95 of ``requests`` GETs. Cold: the overview cache is emptied before each one, so
    every request computes from the rollups (the first view after each run of the job)."""
    from django.core.cache import cache

    for _ in range(2):  # warm-up: imports, template loading, connection
        client.get(path)
    timings: list[float] = []
    size = 0
    for _ in range(requests):
        if cold:
            cache.clear()
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}")
        size = len(response.content)
    return statistics.median(timings), _percentile(timings, 0.95), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep the existing database")
    args = parser.parse_args()

    _database(args.reuse)
    owner, org, keys = _setup()
    from django.db import connection
    from django.test import Client

    from apps.gateway.models import RequestLog, UsageBreakdownRollup, UsageRollup
    from apps.gateway.rollups import rollups_rebuild, rollups_update

    existing = RequestLog.objects.filter(organization=org).count()
    now = datetime.now(UTC)
    if existing < args.rows:
        started = time.perf_counter()
        _copy_rows(
            org,
            keys,
            args.rows - existing,
            start=now - timedelta(days=DAYS),
            span=timedelta(days=DAYS) - timedelta(minutes=2),
        )
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {RequestLog._meta.db_table}")
        took = time.perf_counter() - started
        print(f"generated {args.rows - existing:,} log rows with COPY in {took:.1f} s")
    total = RequestLog.objects.filter(organization=org).count()
    print(f"request log: {total:,} rows for one organization")

    started = time.perf_counter()
    folded = rollups_rebuild()
    took = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageRollup._meta.db_table}")
        cursor.execute(f"ANALYZE {UsageBreakdownRollup._meta.db_table}")
    rollup_rows = UsageRollup.objects.count()
    breakdown_rows = UsageBreakdownRollup.objects.count()
    print(
        f"rollup from scratch: {folded:,} rows in {took:.1f} s = {folded / took:,.0f} rows/s "
        f"→ {rollup_rows:,} full rollup rows "
        f"({UsageRollup.objects.filter(granularity='day').count():,} daily), "
        f"{breakdown_rows:,} breakdown rows "
        f"({UsageBreakdownRollup.objects.filter(granularity='day').count():,} daily)"
    )

    minute = 10_000
    _copy_rows(org, keys, minute, start=now - timedelta(minutes=2), span=timedelta(seconds=60))
    started = time.perf_counter()
    folded = rollups_update()
    took = time.perf_counter() - started
    print(f"incremental run: {folded:,} new rows in {took * 1000:.0f} ms")

    client = Client()
    client.force_login(owner)
    print(f"GET /dashboard/ as the owner, {args.requests} requests each (after 2 warm-ups):")
    results = {}
    for label, query in VIEWS:
        for cold in (True, False):
            p50, p95, size = _time_view(client, f"/dashboard/?{query}", args.requests, cold=cold)
            results[label, cold] = (p50, p95)
            state = "cold" if cold else "warm"
            print(
                f"  {label:<12} {state}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                f"({size / 1024:.0f} KiB)"
            )
    worst = max(p95 for (_label, cold), (_p50, p95) in results.items() if cold)
    verdict = "meets" if worst < TARGET_MS else "MISSES"
    print(
        f"slowest cold p95 over every view: {worst:.1f} ms {verdict} the {TARGET_MS:.0f} ms target"
    )


if __name__ == "__main__":
    main()
