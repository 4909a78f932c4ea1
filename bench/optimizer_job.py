"""Benchmark: the optimizer job over 1,000,000 request-log rows of one organization (issue 8).

    .venv/bin/python bench/optimizer_job.py [--rows 1000000] [--reuse]

1. (Re)creates the PostgreSQL database ``llmwise_bench_opt`` on 127.0.0.1 and migrates it.
2. Generates the rows with the Overview benchmark's generator (``bench/dashboard_overview.py``:
   30 days, 6 models, 4 keys, auto-routed rows with categories, BYOK, ~2% errors), then, in SQL,
   gives them what the optimizer reads beyond that: the ``category`` column, stored prompt text
   on 40% of the rows (drawn from 50,000 distinct prompts, so many repeat), and a failover chain
   with attempts on 10%.
3. Folds the rollups from scratch (what the minutely job keeps current in production), then
   times ``optimizer_run`` — the keyset scan of the window (set to the whole generated month, so
   all 1,000,000 rows are read) plus the recommendations —
   while a thread inserts a log row every 20 ms, as the hot path would, and reports the slowest
   insert: the job must never make the hot path wait.

Settings: the embedded default's settings with DEBUG off, PostgreSQL from DATABASE_URL (default
below); no Redis needed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DB_NAME = "llmwise_bench_opt"
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")

import dashboard_overview as generator  # noqa: E402 - needs the env set above

generator.DB_NAME = DB_NAME
DAYS = generator.DAYS
INSERT_EVERY_SECONDS = 0.02
PROMPT_SHARE_MODULO = 5  # rows with id % 5 < 2 keep text: 40%
DISTINCT_PROMPTS = 50_000
CHAIN_MODULO = 10


# The Overview generator's category labels, as the classifier names them.
CATEGORY_NAMES = {
    "coding": "code",
    "summarize": "summarization",
    "classify": "classification",
    "chat": "chitchat",
    "extraction": "extraction",
}


def _enrich() -> None:
    """What the optimizer reads that the Overview generator does not write."""
    from django.db import connection

    from apps.gateway.models import RequestLog

    table = RequestLog._meta.db_table
    cases = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in CATEGORY_NAMES.items())
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET category = CASE route->>'category' {cases} END "  # noqa: S608
            "WHERE route ? 'category' AND category = ''"
        )
        cursor.execute(
            f"UPDATE {table} SET prompt = jsonb_build_array(jsonb_build_object("  # noqa: S608
            "'role', 'user', 'content', 'Classify ticket ' || (id %% %s))), completion = 'ok' "
            "WHERE id %% %s < 2 AND status = 'ok' AND prompt IS NULL",
            [DISTINCT_PROMPTS, PROMPT_SHARE_MODULO],
        )
        cursor.execute(
            f"UPDATE {table} SET route = route || jsonb_build_object("  # noqa: S608
            "'reason', 'fallback', 'chain', jsonb_build_array('gpt-4.1', model), "
            "'attempts', jsonb_build_array("
            "jsonb_build_object('model', 'gpt-4.1', 'status', 'error'), "
            "jsonb_build_object('model', model, 'status', 'ok'))) "
            "WHERE id %% %s = 0 AND model <> 'gpt-4.1'",
            [CHAIN_MODULO],
        )
        cursor.execute(f"ANALYZE {table}")


def _hot_path_writer(org_id: int, stop: threading.Event, timings: list[float]) -> None:
    """Insert one log row every 20 ms (short transactions, like the call service's settle)."""
    from django.db import connection
    from django.utils import timezone

    from apps.gateway.models import RequestLog

    n = 0
    try:
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            RequestLog.objects.create(
                organization_id=org_id,
                request_id=f"benchhot_{time.time_ns()}_{n}",
                endpoint="openai.chat",
                requested_model="gpt-4o-mini",
                model="gpt-4o-mini",
                provider="openai",
                status="ok",
                http_status=200,
                created_at=timezone.now(),
            )
            timings.append((time.perf_counter() - started) * 1000)
            stop.wait(INSERT_EVERY_SECONDS)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep the existing database")
    args = parser.parse_args()

    generator._database(args.reuse)
    _owner, org, keys = generator._setup()
    from django.db import connection

    from apps.gateway.models import RequestLog, UsageRollup
    from apps.gateway.rollups import rollups_rebuild
    from apps.optimizer.models import OptimizerSettings, Recommendation
    from apps.optimizer.services import optimizer_run

    existing = RequestLog.objects.filter(organization=org).count()
    now = datetime.now(UTC)
    if existing < args.rows:
        started = time.perf_counter()
        generator._copy_rows(
            org,
            keys,
            args.rows - existing,
            start=now - timedelta(days=DAYS),
            span=timedelta(days=DAYS) - timedelta(minutes=2),
        )
        took = time.perf_counter() - started
        print(f"generated {args.rows - existing:,} rows (COPY) in {took:.1f} s")
        started = time.perf_counter()
        _enrich()
        print(
            f"categories, prompts, chains added (UPDATE) in {time.perf_counter() - started:.1f} s"
        )
    total = RequestLog.objects.filter(organization=org).count()
    print(f"request log: {total:,} rows for one organization over {DAYS} days")

    started = time.perf_counter()
    folded = rollups_rebuild()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageRollup._meta.db_table}")
    print(
        f"rollups from scratch (the minutely job's work): {folded:,} rows in "
        f"{time.perf_counter() - started:.1f} s"
    )

    with connection.cursor() as cursor:
        cursor.execute(  # the plan of one keyset batch
            "EXPLAIN SELECT id FROM gateway_requestlog WHERE organization_id = %s "
            "AND created_at >= %s AND created_at < %s ORDER BY created_at, id LIMIT 5000",
            [org.pk, now - timedelta(days=DAYS), now],
        )
        plan = " / ".join(row[0].strip() for row in cursor.fetchall()[:3])
    print(f"batch plan: {plan}")

    # The whole generated month in the window: every one of the 1,000,000 rows is read.
    OptimizerSettings.objects.update_or_create(organization=org, defaults={"window_days": DAYS})
    for attempt in (1, 2):
        stop = threading.Event()
        timings: list[float] = []
        writer = threading.Thread(target=_hot_path_writer, args=(org.pk, stop, timings))
        writer.start()
        started = time.perf_counter()
        run = optimizer_run(org=org, trigger="bench")
        took = time.perf_counter() - started
        stop.set()
        writer.join()
        print(
            f"optimizer job, run {attempt}: {run.rows_scanned:,} rows in the {DAYS}-day window in "
            f"{took:.1f} s = {run.rows_scanned / took:,.0f} rows/s; recommendations "
            f"{run.created} new, {run.updated} updated, {run.superseded} superseded"
        )
        if timings:
            print(
                f"  hot-path inserts meanwhile: {len(timings)}, p50 "
                f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms"
            )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak_mib:,.0f} MiB")
    for rec in Recommendation.objects.filter(organization=org, status="new"):
        print(
            f"  [{rec.kind}] {rec.title} — ${rec.monthly_saving_micros / 1e6:,.2f}/month, "
            f"confidence {rec.confidence}"
        )


if __name__ == "__main__":
    main()
