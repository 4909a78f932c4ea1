"""Analytics reads for the Overview page: every number comes from :class:`UsageBreakdownRollup`.

Never the raw request log: a page costs a few indexed range reads over the narrow rollups of one
organization (a total per bucket, and per bucket one row per model, API key and task category),
whatever the size of its log. Organization first, always.

Windows are whole UTC buckets ending with the current one: "24h" is the last 24 hour buckets,
"7d" the last 7 day buckets (or 168 hour buckets), "30d" the last 30 day buckets, the current
bucket being partial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.core.cache import cache
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from apps.accounts.models import ApiKey, Organization
from apps.wallet.selectors import wallet_summary

from .models import RollupCursor, UsageBreakdownRollup, UsageRollup
from .rollups import COUNTERS, CURSOR_NAME, frontier_model, latency_percentile

HOUR, DAY = UsageRollup.Granularity.HOUR.value, UsageRollup.Granularity.DAY.value
Dimension = UsageBreakdownRollup.Dimension
RANGES: dict[str, tuple[int, tuple[str, ...]]] = {
    # range → (length in hours, granularities allowed; the first is the default)
    "24h": (24, (HOUR,)),
    "7d": (7 * 24, (DAY, HOUR)),
    "30d": (30 * 24, (DAY, HOUR)),
}
DEFAULT_RANGE = "7d"
BURN_RATE_DAYS = 7  # burn rate = average daily charged spend over this many days
P50, P95 = 0.50, 0.95
# An upper bound only: a new run of the rollup job changes the cache key long before.
OVERVIEW_CACHE_SECONDS = 600


@dataclass(frozen=True)
class AnalyticsWindow:
    range_key: str
    granularity: str
    start: datetime  # inclusive bucket start
    end: datetime  # exclusive
    buckets: tuple[datetime, ...]


def analytics_window(
    *, range_key: str | None, granularity: str | None, now: datetime | None = None
) -> AnalyticsWindow:
    """The window for a (possibly invalid, user-sent) range and granularity: anything unknown
    falls back to the defaults rather than failing."""
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    hours, allowed = RANGES[range_key]
    if granularity not in allowed:
        granularity = allowed[0]
    now = (now or timezone.now()).astimezone(UTC)
    current_hour = now.replace(minute=0, second=0, microsecond=0)
    if granularity == HOUR:
        step = timedelta(hours=1)
        end = current_hour + step
        count = hours
    else:
        step = timedelta(days=1)
        end = current_hour.replace(hour=0) + step
        count = hours // 24
    start = end - step * count
    buckets = tuple(start + step * i for i in range(count))
    return AnalyticsWindow(range_key, granularity, start, end, buckets)


class _Sums:
    """Counters added up (in SQL), plus a merged latency histogram (in Python)."""

    __slots__ = ("histogram", "values")

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # Keys stay the strings JSON stored them as until a percentile is read: converting
        # every key of every row would double the cost of the merge.
        self.histogram: dict[str, int] = {}

    def add_counter_values(self, counters: list[int]) -> None:
        """Add one row's counters, given in the order of ``COUNTERS``."""
        values = self.values
        for name, value in zip(COUNTERS, counters, strict=True):
            values[name] += value

    def add(self, other: _Sums) -> None:
        self.add_counter_values([other.values[name] for name in COUNTERS])
        self.add_histogram(other.histogram)

    def add_histogram(self, histogram: dict[str, int]) -> None:
        merged = self.histogram
        for index, count in histogram.items():
            merged[index] = merged.get(index, 0) + count

    def stats(self) -> dict[str, Any]:
        """The derived numbers every table and chart shows."""
        values = self.values
        requests = values["requests"]
        histogram = {int(index): count for index, count in self.histogram.items()}
        return {
            **values,
            "tokens": values["prompt_tokens"] + values["completion_tokens"],
            "error_rate": values["errors"] / requests if requests else 0.0,
            "error_percent": 100 * values["errors"] / requests if requests else 0.0,
            "p50_ms": _round(latency_percentile(histogram, P50)),
            "p95_ms": _round(latency_percentile(histogram, P95)),
            "avg_latency_ms": values["latency_ms_sum"] / requests if requests else None,
            "avg_prompt_tokens": values["prompt_tokens"] / requests if requests else 0.0,
            "avg_completion_tokens": values["completion_tokens"] / requests if requests else 0.0,
            "avg_cost_micros": values["cost_micros"] // requests if requests else 0,
        }


_K = TypeVar("_K")


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


@dataclass(frozen=True)
class BurnRate:
    balance_micros: int
    available_micros: int
    daily_charged_micros: int  # average over BURN_RATE_DAYS
    days_left: float | None  # None: no recent spend, so no end in sight


@dataclass(frozen=True)
class AutoSavings:
    auto_requests: int
    auto_cost_micros: int
    frontier_cost_micros: int
    frontier_model: str | None  # today's reference model (the stored costs used the one then)

    @property
    def saved_micros(self) -> int:
        return self.frontier_cost_micros - self.auto_cost_micros

    @property
    def saved_percent(self) -> float | None:
        if self.frontier_cost_micros <= 0:
            return None
        return 100 * self.saved_micros / self.frontier_cost_micros


@dataclass(frozen=True)
class UsageOverview:
    window: AnalyticsWindow
    totals: dict[str, Any]
    series: list[dict[str, Any]]
    models: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    savings: AutoSavings

    @property
    def has_traffic(self) -> bool:
        return bool(self.totals["requests"])


def _spans(window: AnalyticsWindow) -> list[tuple[str, datetime, datetime]]:
    """(granularity, start, end) ranges of rollup buckets that together cover exactly the window,
    coarsest first: the whole UTC days inside an hourly window come from day rows (a day row is
    the sum of its 24 hour rows: the job writes both from the same log rows in one transaction),
    only the partial days at its edges from hour rows."""
    if window.granularity == DAY:
        return [(DAY, window.start, window.end)]
    first_day = window.start.replace(hour=0)
    if first_day < window.start:
        first_day += timedelta(days=1)
    last_day = window.end.replace(hour=0)
    if first_day >= last_day:
        return [(HOUR, window.start, window.end)]
    spans = [(DAY, first_day, last_day)]
    if window.start < first_day:
        spans.append((HOUR, window.start, first_day))
    if last_day < window.end:
        spans.append((HOUR, last_day, window.end))
    return spans


def _breakdown_rows(*, org: Organization, window: AnalyticsWindow) -> QuerySet[Any]:
    """The rows one Overview reads: the window's total per bucket (its series) and, for the
    tables over the whole window, the model, key and category rows of :func:`_spans`."""
    condition = Q(
        granularity=window.granularity,
        dimension=Dimension.TOTAL,
        bucket_start__gte=window.start,
        bucket_start__lt=window.end,
    )
    for granularity, start, end in _spans(window):
        condition |= Q(
            granularity=granularity,
            dimension__in=(Dimension.MODEL, Dimension.KEY, Dimension.CATEGORY),
            bucket_start__gte=start,
            bucket_start__lt=end,
        )
    return UsageBreakdownRollup.objects.filter(condition, organization=org).values_list(
        *_ROW_FIELDS
    )


def _entry(groups: dict[_K, _Sums], key: _K) -> _Sums:
    sums = groups.get(key)
    if sums is None:
        groups[key] = sums = _Sums()
    return sums


def usage_overview(*, org: Organization, window: AnalyticsWindow) -> UsageOverview:
    """Everything the Overview page shows for ``org`` over ``window``, from the rollups.

    Cached until the rollups next move (the key holds the job's cursor): between two runs of
    the job, a minute apart, every view of the same window reads the same numbers anyway.
    """
    state = (
        RollupCursor.objects.filter(name=CURSOR_NAME).values_list("last_id", "updated_at").first()
    )
    if state is None:
        return _usage_overview(org=org, window=window)
    last_id, updated_at = state
    stamp = updated_at.timestamp() if updated_at is not None else 0
    key = (
        f"analytics:overview:{org.pk}:{window.granularity}:{window.start.timestamp():.0f}:"
        f"{window.end.timestamp():.0f}:{last_id}:{stamp}"
    )
    overview: UsageOverview | None = cache.get(key)
    if overview is None:
        overview = _usage_overview(org=org, window=window)
        cache.set(key, overview, OVERVIEW_CACHE_SECONDS)
    return overview


# What the one read of the breakdown rows returns, in this order.
_ROW_FIELDS = (
    "dimension",
    "bucket_start",
    "model",
    "provider",
    "api_key_id",
    "category",
    "latency_histogram",
    *COUNTERS,
)


def _usage_overview(*, org: Organization, window: AnalyticsWindow) -> UsageOverview:
    """The overview computed from the breakdown rollups (see :func:`usage_overview`).

    One read (see :func:`_breakdown_rows`: a month by the hour is ~720 total rows plus ~1,000
    model, key and category rows), added up here: a single pass over the rows is cheaper than a
    GROUP BY per breakdown that each reads them again, and the latency histograms have to be
    merged here anyway (percentiles don't add up).
    """
    total = _Sums()
    by_bucket: dict[datetime, _Sums] = {bucket: _Sums() for bucket in window.buckets}
    by_model: dict[tuple[str, str], _Sums] = {}
    by_key: dict[int | None, _Sums] = {}
    by_category: dict[str, _Sums] = {}
    rows = _breakdown_rows(org=org, window=window)
    for dimension, bucket_start, model, provider, key_id, category, histogram, *counters in rows:
        if dimension == Dimension.TOTAL:
            sums = _entry(by_bucket, bucket_start.astimezone(UTC))
        elif dimension == Dimension.MODEL:
            sums = _entry(by_model, (model, provider))
        elif dimension == Dimension.CATEGORY:
            sums = _entry(by_category, category)
        elif dimension == Dimension.KEY:
            _entry(by_key, key_id).add_counter_values(counters)
            continue  # the key table shows no percentiles: skip the histogram merge
        else:  # a dimension this code does not know: not ours to show
            continue
        sums.add_counter_values(counters)
        if histogram:
            sums.add_histogram(histogram)
    for sums in by_bucket.values():
        total.add(sums)

    series = [{"bucket": bucket, **sums.stats()} for bucket, sums in sorted(by_bucket.items())]
    models = sorted(
        (
            {"model": model or "(unresolved)", "provider": provider, **sums.stats()}
            for (model, provider), sums in by_model.items()
        ),
        key=lambda r: (-r["cost_micros"], -r["requests"], r["model"]),
    )
    key_ids = [k for k in by_key if k is not None]
    key_labels = {
        key_id: (name, prefix)
        for key_id, name, prefix in ApiKey.objects.filter(
            organization=org, id__in=key_ids
        ).values_list("id", "name", "prefix")
    }
    keys = sorted(
        (
            {
                "api_key_id": key_id,
                "name": _key_label(key_id, key_labels),
                "prefix": key_labels.get(key_id, ("", ""))[1] if key_id is not None else "",
                **sums.stats(),
            }
            for key_id, sums in by_key.items()
        ),
        key=lambda r: (-r["cost_micros"], -r["requests"], r["name"]),
    )
    categories = sorted(
        (
            {"category": category or "Uncategorized", **sums.stats()}
            for category, sums in by_category.items()
        ),
        key=lambda r: (-r["requests"], r["category"]),
    )
    reference = frontier_model()
    savings = AutoSavings(
        auto_requests=total.values["auto_requests"],
        auto_cost_micros=total.values["auto_cost_micros"],
        frontier_cost_micros=total.values["frontier_cost_micros"],
        frontier_model=reference.id if reference is not None else None,
    )
    return UsageOverview(window, total.stats(), series, models, keys, categories, savings)


def _key_label(key_id: int | None, labels: dict[int, tuple[str, str]]) -> str:
    if key_id is None:
        return "No API key (dashboard)"
    label = labels.get(key_id)
    return label[0] if label is not None else f"Deleted key #{key_id}"


def burn_rate(*, org: Organization, now: datetime | None = None) -> BurnRate:
    """Days of credit left at the average daily charged spend of the last ``BURN_RATE_DAYS``."""
    summary = wallet_summary(org=org)
    since = (now or timezone.now()) - timedelta(days=BURN_RATE_DAYS)
    charged = (
        UsageBreakdownRollup.objects.filter(
            organization=org, granularity=HOUR, dimension=Dimension.TOTAL, bucket_start__gte=since
        ).aggregate(total=Sum("charged_micros"))["total"]
        or 0
    )
    daily = charged // BURN_RATE_DAYS
    days_left = summary.available_micros / daily if daily > 0 else None
    return BurnRate(summary.balance_micros, summary.available_micros, daily, days_left)
