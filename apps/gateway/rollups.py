"""Usage rollups: the request log folded, incrementally, into hourly and daily aggregates.

:func:`rollups_update` reads the request-log rows added since :class:`RollupCursor` (in id order,
in bounded batches, with plain indexed range reads: the hot path's inserts never wait on it),
adds them up in Python, then writes the sums into :class:`UsageRollup` (the full dimension tuple)
and :class:`UsageBreakdownRollup` (the same sums per model, key and category, and in total: what
the Overview reads) and moves the cursor in the same transaction. The cursor row is locked for
the batch (``FOR UPDATE SKIP LOCKED``), so two workers running the job at once never count a row
twice: the second one simply finds nothing to do. The analytics selectors
(:mod:`apps.gateway.analytics`) read only the rollups.

Why the newest seconds wait: ids come from a sequence when a row is inserted, but rows become
visible when their transaction commits, which can be in a different order. If the job read id
101 while id 100 was still uncommitted, moving the cursor past 101 would lose 100 forever. A row
is written as the last statement of a short settle transaction with ``created_at = now()``, so
the job stops at the first row younger than ``ANALYTICS_ROLLUP_LAG_SECONDS``: by then every
smaller id has long committed or rolled back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.accounts.models import Organization

from .models import (
    LATENCY_BUCKET_COUNT,
    LATENCY_BUCKETS_PER_DOUBLING,
    CatalogModel,
    RequestLog,
    RollupCursor,
    Tier,
    UsageBreakdownRollup,
    UsageRollup,
)
from .pricing import cost_micros
from .providers.base import Usage

CURSOR_NAME = "usage_rollups"
DEFAULT_BATCH_SIZE = 5000
AUTO_MODEL = "auto"  # what a caller asks for to let the auto-router choose
CATEGORY_MAX_LENGTH = UsageRollup._meta.get_field("category").max_length or 40

# The additive integer columns, in the order _Totals keeps them.
COUNTERS: tuple[str, ...] = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micros",
    "charged_micros",
    "latency_ms_sum",
    "upstream_ms_sum",
    "estimated_usage",
    "auto_requests",
    "auto_cost_micros",
    "frontier_cost_micros",
)
DIMENSIONS: tuple[str, ...] = (
    "organization_id",
    "granularity",
    "bucket_start",
    "model",
    "provider",
    "api_key_id",
    "category",
    "byok",
)
# Only what the rollup needs: never the prompt or completion text.
LOG_FIELDS: tuple[str, ...] = (
    "id",
    "organization_id",
    "api_key_id",
    "requested_model",
    "model",
    "provider",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_micros",
    "byok",
    "latency_ms",
    "upstream_ms",
    "route",
    "category",
    "created_at",
)

BREAKDOWN_DIMENSIONS: tuple[str, ...] = (
    "organization_id",
    "granularity",
    "bucket_start",
    "dimension",
    "model",
    "provider",
    "api_key_id",
    "category",
)

DimensionKey = tuple[int, str, datetime, str, str, int | None, str, bool]
BreakdownKey = tuple[int, str, datetime, str, str, str, int | None, str]
Dimension = UsageBreakdownRollup.Dimension


# --- latency histogram ------------------------------------------------------------------------
def latency_bucket(latency_ms: int) -> int:
    """The histogram bucket of a latency (see ``LATENCY_BUCKETS_PER_DOUBLING``)."""
    if latency_ms < 1:
        return 0
    index = math.floor(math.log2(latency_ms) * LATENCY_BUCKETS_PER_DOUBLING) + 1
    return min(index, LATENCY_BUCKET_COUNT - 1)


def _bucket_bounds(index: int) -> tuple[float, float]:
    if index == 0:
        return 0.0, 1.0
    return (
        2 ** ((index - 1) / LATENCY_BUCKETS_PER_DOUBLING),
        2 ** (index / LATENCY_BUCKETS_PER_DOUBLING),
    )


def latency_percentile(histogram: Mapping[int, int], quantile: float) -> float | None:
    """Estimate a latency percentile (ms) from bucket counts; None when there are none.

    Interpolates geometrically inside the bucket that holds the rank, so the estimate is within
    one bucket width (~19%) at worst and typically within a few percent.
    """
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = quantile * total
    seen = 0
    for index in sorted(histogram):
        count = histogram[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = _bucket_bounds(index)
            if index == LATENCY_BUCKET_COUNT - 1:
                return low  # open-ended: the lower bound is all we know
            fraction = (rank - seen) / count
            if index == 0:
                return high * fraction
            return float(low * (high / low) ** fraction)
        seen += count
    return _bucket_bounds(max(histogram))[0]


def histogram_merge(into: dict[int, int], stored: Mapping[str, int] | Mapping[int, int]) -> None:
    """Add a stored (string-keyed, as JSON keeps it) or in-memory histogram into ``into``."""
    for index, count in stored.items():
        key = int(index)
        into[key] = into.get(key, 0) + int(count)


# --- aggregation ------------------------------------------------------------------------------
@dataclass
class _Totals:
    counters: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    histogram: dict[int, int] = field(default_factory=dict)


def _category(route: Any) -> str:
    # Rows logged before RequestLog.category existed carry the category only in the route.
    if isinstance(route, dict):
        value = route.get("category", "")
        if isinstance(value, str):
            return value[:CATEGORY_MAX_LENGTH]
    return ""


def _is_auto(requested_model: str, route: Any) -> bool:
    return requested_model == AUTO_MODEL or (
        isinstance(route, dict) and route.get("requested") == AUTO_MODEL
    )


def frontier_model() -> CatalogModel | None:
    """The reference for auto-routing savings: the enabled frontier-tier model with the highest
    output price (then input price). Assumption, documented in docs/analytics.md: without
    auto-routing, a caller who wants the best answer would have sent everything to it."""
    return (
        CatalogModel.objects.filter(enabled=True, tier=Tier.FRONTIER)
        .order_by("-output_price_micros_per_mtok", "-input_price_micros_per_mtok", "id")
        .first()
    )


def _aggregate(
    rows: Iterable[tuple[Any, ...]], *, frontier: CatalogModel | None
) -> dict[DimensionKey, _Totals]:
    totals: dict[DimensionKey, _Totals] = defaultdict(_Totals)
    for (
        _id,
        org_id,
        api_key_id,
        requested_model,
        model,
        provider,
        status,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        reasoning_tokens,
        usage_estimated,
        cost,
        byok,
        latency_ms,
        upstream_ms,
        route,
        logged_category,
        created_at,
    ) in rows:
        auto = _is_auto(requested_model, route)
        frontier_cost = 0
        if auto and frontier is not None:
            frontier_cost = cost_micros(
                model=frontier,
                usage=Usage(prompt_tokens, completion_tokens, cached_tokens=cached_tokens),
            )
        values = (
            1,
            int(status == RequestLog.Status.ERROR),
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            reasoning_tokens,
            cost,
            0 if byok else cost,
            latency_ms,
            upstream_ms,
            int(usage_estimated),
            int(auto),
            cost if auto else 0,
            frontier_cost,
        )
        bucket = latency_bucket(latency_ms)
        category = logged_category[:CATEGORY_MAX_LENGTH] or _category(route)
        created = created_at.astimezone(UTC)
        hour = created.replace(minute=0, second=0, microsecond=0)
        day = hour.replace(hour=0)
        for granularity, start in (
            (UsageRollup.Granularity.HOUR.value, hour),
            (UsageRollup.Granularity.DAY.value, day),
        ):
            key: DimensionKey = (
                org_id,
                granularity,
                start,
                model,
                provider,
                api_key_id,
                category,
                byok,
            )
            entry = totals[key]
            entry.counters = [a + b for a, b in zip(entry.counters, values, strict=True)]
            entry.histogram[bucket] = entry.histogram.get(bucket, 0) + 1
    return totals


def _breakdowns(totals: Mapping[DimensionKey, _Totals]) -> dict[BreakdownKey, _Totals]:
    """Project full-tuple sums onto each breakdown dimension (and the bucket's total)."""
    out: dict[BreakdownKey, _Totals] = defaultdict(_Totals)
    for key, entry in totals.items():
        org_id, granularity, start, model, provider, api_key_id, category, _byok = key
        for breakdown in (
            (org_id, granularity, start, Dimension.TOTAL.value, "", "", None, ""),
            (org_id, granularity, start, Dimension.MODEL.value, model, provider, None, ""),
            (org_id, granularity, start, Dimension.KEY.value, "", "", api_key_id, ""),
            (org_id, granularity, start, Dimension.CATEGORY.value, "", "", None, category),
        ):
            target = out[breakdown]
            target.counters = [a + b for a, b in zip(target.counters, entry.counters, strict=True)]
            histogram_merge(target.histogram, entry.histogram)
    return out


def _histogram_json(histogram: Mapping[int, int]) -> dict[str, int]:
    return {str(index): count for index, count in sorted(histogram.items())}


class _Table:
    """One rollup table as the writer sees it: its model and the columns naming a row."""

    def __init__(
        self, model: type[UsageRollup] | type[UsageBreakdownRollup], dimensions: tuple[str, ...]
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self._fields = {f.attname: f for f in model._meta.concrete_fields}

    def column(self, attname: str) -> str:
        return connection.ops.quote_name(str(self._fields[attname].column))

    def prep(self, attname: str, value: Any) -> Any:
        return self._fields[attname].get_db_prep_save(value, connection)


FULL = _Table(UsageRollup, DIMENSIONS)
BREAKDOWN = _Table(UsageBreakdownRollup, BREAKDOWN_DIMENSIONS)


def _apply(table: _Table, totals: Mapping[tuple[Any, ...], _Totals]) -> None:
    """Add ``totals`` into ``table``'s rows (creating the missing ones). Runs under the cursor
    lock: the histogram merge is a read-modify-write that no other writer can interleave with,
    and no one else inserts a row of the same tuple (the unique constraints would refuse it
    anyway); the counters are incremented in SQL, so they stay right even without the lock."""
    if not totals:
        return
    org_ids = {key[0] for key in totals}
    starts = {key[2] for key in totals}
    existing: dict[tuple[Any, ...], Any] = {}
    for stored in table.model.objects.filter(
        organization_id__in=org_ids, bucket_start__in=starts
    ).only(*table.dimensions, "latency_histogram"):
        existing[tuple(getattr(stored, name) for name in table.dimensions)] = stored
    to_update: list[tuple[Any, ...]] = []
    to_create: list[tuple[Any, ...]] = []
    for key, entry in totals.items():
        row = existing.get(key)
        if row is None:
            dimensions = [
                table.prep(name, value) for name, value in zip(table.dimensions, key, strict=True)
            ]
            to_create.append(
                (*dimensions, *entry.counters, _prep_histogram(table, entry.histogram))
            )
            continue
        merged: dict[int, int] = {}
        histogram_merge(merged, row.latency_histogram or {})
        histogram_merge(merged, entry.histogram)
        to_update.append((*entry.counters, _prep_histogram(table, merged), row.pk))
    # Plain parameterized statements run with executemany (pipelined by psycopg): the ORM's
    # bulk_update builds a CASE per column whose cost grows with the square of the batch.
    name = connection.ops.quote_name(table.model._meta.db_table)
    with connection.cursor() as cursor:
        if to_update:
            increments = ", ".join(f"{table.column(c)} = {table.column(c)} + %s" for c in COUNTERS)
            cursor.executemany(
                f"UPDATE {name} SET {increments}, {table.column('latency_histogram')} = %s "  # noqa: S608
                f"WHERE {table.column('id')} = %s",
                to_update,
            )
        if to_create:
            columns = [*table.dimensions, *COUNTERS, "latency_histogram"]
            cursor.executemany(
                f"INSERT INTO {name} ({', '.join(table.column(c) for c in columns)}) "  # noqa: S608
                f"VALUES ({', '.join(['%s'] * len(columns))})",
                to_create,
            )


def _prep_histogram(table: _Table, histogram: Mapping[int, int]) -> Any:
    return table.prep("latency_histogram", _histogram_json(histogram))


def _apply_all(totals: Mapping[DimensionKey, _Totals]) -> None:
    """Write one batch's sums into both tables (the caller holds the transaction)."""
    _apply(FULL, totals)
    _apply(BREAKDOWN, _breakdowns(totals))


def _cursor_row() -> None:
    # Created once, outside the batch transaction; get_or_create survives a concurrent create.
    RollupCursor.objects.get_or_create(name=CURSOR_NAME)


def _horizon() -> datetime:
    return timezone.now() - timedelta(seconds=settings.ANALYTICS_ROLLUP_LAG_SECONDS)


def _batch(*, batch_size: int, frontier: CatalogModel | None) -> tuple[int, bool]:
    """Apply one batch: (rows processed, whether more rows may be waiting right now)."""
    with transaction.atomic():
        cursor = (
            RollupCursor.objects.select_for_update(skip_locked=True)
            .filter(name=CURSOR_NAME)
            .first()
        )
        if cursor is None:
            return 0, False  # another worker holds the cursor: it is doing this work
        rows = list(
            RequestLog.objects.filter(id__gt=cursor.last_id)
            .order_by("id")
            .values_list(*LOG_FIELDS)[:batch_size]
        )
        full = len(rows) == batch_size
        horizon = _horizon()
        for position, row in enumerate(rows):
            if row[-1] > horizon:
                rows = rows[:position]
                full = False
                break
        if not rows:
            return 0, False
        _apply_all(_aggregate(rows, frontier=frontier))
        cursor.last_id = rows[-1][0]
        cursor.updated_at = timezone.now()
        cursor.save(update_fields=["last_id", "updated_at"])
        return len(rows), full


def rollups_update(*, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Fold every request-log row added since the last run into the rollups; returns how many.

    Idempotent and safe to run from several workers at once (see the module docstring). Rows
    younger than ``ANALYTICS_ROLLUP_LAG_SECONDS`` wait for the next run.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    _cursor_row()
    frontier = frontier_model()
    processed = 0
    more = True
    while more:
        count, more = _batch(batch_size=batch_size, frontier=frontier)
        processed += count
    return processed


def rollups_rebuild(
    *, org: Organization | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """Recompute the rollups from the raw log (after a bug fix or a price-table change).

    For one organization: in one transaction with the cursor locked, drop its rollups and re-add
    its rows up to the cursor (later rows are the next regular run's), so its pages never show a
    half-built state. For all: drop everything, reset the cursor and catch up batch by batch.
    Returns the number of rows folded in.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    _cursor_row()
    frontier = frontier_model()
    if org is None:
        with transaction.atomic():
            cursor = RollupCursor.objects.select_for_update().get(name=CURSOR_NAME)
            UsageRollup.objects.all().delete()
            UsageBreakdownRollup.objects.all().delete()
            cursor.last_id = 0
            cursor.updated_at = timezone.now()
            cursor.save(update_fields=["last_id", "updated_at"])
        return rollups_update(batch_size=batch_size)
    processed = 0
    with transaction.atomic():
        cursor = RollupCursor.objects.select_for_update().get(name=CURSOR_NAME)
        UsageRollup.objects.filter(organization=org).delete()
        UsageBreakdownRollup.objects.filter(organization=org).delete()
        after = 0
        while True:
            rows = list(
                RequestLog.objects.filter(organization=org, id__gt=after, id__lte=cursor.last_id)
                .order_by("id")
                .values_list(*LOG_FIELDS)[:batch_size]
            )
            if not rows:
                break
            _apply_all(_aggregate(rows, frontier=frontier))
            processed += len(rows)
            after = rows[-1][0]
        # The rollups changed under the same cursor position: mark it, so cached pages go stale.
        cursor.updated_at = timezone.now()
        cursor.save(update_fields=["updated_at"])
    return processed


def rollups_last_run() -> datetime | None:
    """When the rollups last moved forward (for "updated ... ago" on the pages)."""
    return (
        RollupCursor.objects.filter(name=CURSOR_NAME).values_list("updated_at", flat=True).first()
    )
