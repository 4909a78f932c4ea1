"""Read one organization's traffic over a window into the numbers recommendations rest on.

Two sources, each used for what only it can give cheaply:

- **The request log, in one bounded pass** (:func:`traffic_scan`): failover frequency needs each
  row's ``route.attempts`` and cache opportunities need a hash of each prompt, so the window's rows
  must be read anyway; the per model x task-category counters are folded into the same pass,
  which also lets them use the log's authoritative ``category`` column. The pass reads only
  narrow columns (never the texts: the prompt hash is computed by the database, and only for rows
  that retain text), in keyset batches over the ``(organization, created_at)`` index, each batch
  its own short read — no lock, no long transaction, nothing the hot path's inserts wait on.
- **The usage rollups** (:func:`daily_model_errors`, :func:`key_spend`): day-by-day error series
  per model and week-over-week spend per key are exactly what they already hold.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Case, CharField, F, Q, QuerySet, Sum, TextField, Value, When
from django.db.models.functions import MD5, Cast, Concat, Substr

from apps.accounts.models import ApiKey, Organization
from apps.gateway.models import RequestLog, UsageRollup
from apps.gateway.rollups import histogram_merge, latency_bucket, latency_percentile

OPTIMIZER_ENDPOINT_PREFIX = "optimizer."  # replays and judge calls: never analysed as traffic
DEFAULT_BATCH_SIZE = 5000
HASH_CHARS = 16  # 64 bits of MD5: collisions are negligible at a few million prompts
# A digest's counter packs the count with the index of its model (the digest covers the model,
# so it is the same for every hit): one small int per digest instead of a tuple, which keeps a
# window of a million retained prompts in tens of megabytes.
_MODEL_BITS = 12
_MODEL_MASK = (1 << _MODEL_BITS) - 1
P50, P95 = 0.50, 0.95
UNCATEGORIZED = ""


@dataclass
class Cell:
    """One model's traffic in one task category."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    fallback_answers: int = 0  # answered by a fallback after an earlier member failed
    multi_attempt: int = 0  # needed more than one attempt
    histogram: dict[int, int] = field(default_factory=dict)
    ttft_histogram: dict[int, int] = field(default_factory=dict)  # streamed answers only

    def add(self, other: Cell) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_micros += other.cost_micros
        self.fallback_answers += other.fallback_answers
        self.multi_attempt += other.multi_attempt
        histogram_merge(self.histogram, other.histogram)
        histogram_merge(self.ttft_histogram, other.ttft_histogram)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ok_requests(self) -> int:
        return self.requests - self.errors

    def percentile(self, quantile: float) -> int | None:
        value = latency_percentile(self.histogram, quantile)
        return None if value is None else round(value)

    def summary(self) -> dict[str, Any]:
        """The cell as evidence: plain numbers, JSON-ready."""
        ok = self.ok_requests
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": self.percentile(P50),
            "p95_ms": self.percentile(P95),
            "ttft_p50_ms": _rounded(latency_percentile(self.ttft_histogram, P50)),
            "avg_prompt_tokens": round(self.prompt_tokens / ok, 1) if ok else 0,
            "avg_completion_tokens": round(self.completion_tokens / ok, 1) if ok else 0,
            "cost_micros": self.cost_micros,
            "cost_per_request_micros": self.cost_micros // ok if ok else 0,
            "fallback_rate": round(self.fallback_answers / self.requests, 4)
            if self.requests
            else 0.0,
        }


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


@dataclass
class Reliability:
    """How one model's attempts went, across every chain and category (a model property)."""

    attempts: int = 0
    failures: int = 0
    skipped: int = 0  # breaker open or provider cooling down: not tried

    @property
    def failure_rate(self) -> float:
        tried = self.attempts
        return self.failures / tried if tried else 0.0


@dataclass
class Duplicates:
    """Repeated identical requests (same messages, same model) of one model."""

    hashed_requests: int = 0
    repeated_prompts: int = 0  # distinct prompts seen at least twice
    duplicate_requests: int = 0  # hits beyond the first of each repeated prompt
    top_repeats: list[int] = field(default_factory=list)


@dataclass
class Traffic:
    """What :func:`traffic_scan` found."""

    window_start: datetime
    window_end: datetime
    rows_scanned: int = 0
    first_seen: datetime | None = None
    not_hashed: int = 0  # rows without text (zero retention) or errors: never hashed
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    reliability: dict[str, Reliability] = field(default_factory=dict)
    chains: dict[str, Counter[tuple[str, ...]]] = field(default_factory=dict)
    duplicates: dict[str, Duplicates] = field(default_factory=dict)

    @property
    def observed_days(self) -> float:
        """Days of traffic actually seen (at least one): savings scale from these to a month."""
        if self.first_seen is None:
            return 1.0
        span = (self.window_end - self.first_seen).total_seconds() / 86_400
        return max(span, 1.0)

    def categories(self) -> list[str]:
        return sorted({category for _model, category in self.cells if category})

    def cells_of(self, category: str) -> dict[str, Cell]:
        return {m: cell for (m, c), cell in self.cells.items() if c == category}

    def model_totals(self) -> dict[str, Cell]:
        totals: dict[str, Cell] = defaultdict(Cell)
        for (model, _category), cell in self.cells.items():
            totals[model].add(cell)
        return dict(totals)

    def stats_table(self) -> list[dict[str, Any]]:
        """Every model x category cell as JSON rows (stored with the run, shown on the page)."""
        rows = [
            {"model": model, "category": category or "uncategorized", **cell.summary()}
            for (model, category), cell in self.cells.items()
        ]
        for row in rows:
            reliability = self.reliability.get(row["model"])
            row["attempt_failure_rate"] = (
                round(reliability.failure_rate, 4) if reliability is not None else 0.0
            )
        return sorted(rows, key=lambda r: (r["category"], -r["requests"], r["model"]))


def zero_retention_key_ids(*, org: Organization) -> list[int]:
    """Keys of ``org`` set never to keep text: their rows are not hashed even if some hold text
    from before the setting changed."""
    return list(
        ApiKey.objects.filter(organization=org, zero_retention=True).values_list("id", flat=True)
    )


def window_rows(*, org: Organization, start: datetime, end: datetime) -> QuerySet[RequestLog]:
    """``org``'s customer traffic in ``[start, end)``: the optimizer's own calls excluded."""
    return RequestLog.objects.filter(
        organization=org, created_at__gte=start, created_at__lt=end
    ).exclude(endpoint__startswith=OPTIMIZER_ENDPOINT_PREFIX)


def _prompt_hash(*, org: Organization) -> Any:
    """The database expression hashing a row's messages and model, or '' for a row that must
    not be hashed: no text (zero retention), a failed call, or a key or org that is set to zero
    retention now. The text never leaves the database."""
    if org.zero_retention:
        return Value("", output_field=CharField())
    hashable = Q(prompt__isnull=False, status=RequestLog.Status.OK)
    blocked = zero_retention_key_ids(org=org)
    if blocked:
        hashable &= ~Q(api_key_id__in=blocked)
    digest = Substr(
        MD5(
            Concat(Cast("prompt", TextField()), Value("\x1f"), F("model"), output_field=TextField())
        ),
        1,
        HASH_CHARS,
    )
    return Case(When(hashable, then=digest), default=Value(""), output_field=CharField())


SCAN_FIELDS = (
    "id",
    "created_at",
    "model",
    "category",
    "status",
    "route",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
    "prompt_hash",
)


def _batches(
    *, org: Organization, start: datetime, end: datetime, batch_size: int
) -> Iterable[list[tuple[Any, ...]]]:
    """Keyset batches ordered by (created_at, id): each is one short indexed read."""
    base = window_rows(org=org, start=start, end=end).annotate(prompt_hash=_prompt_hash(org=org))
    after: tuple[datetime, int] | None = None
    while True:
        query = base
        if after is not None:
            created, pk = after
            # The plain bound keeps the scan on the index range; the OR breaks created_at ties.
            query = query.filter(created_at__gte=created).filter(
                Q(created_at__gt=created) | Q(created_at=created, id__gt=pk)
            )
        rows = list(query.order_by("created_at", "id").values_list(*SCAN_FIELDS)[:batch_size])
        if not rows:
            return
        yield rows
        if len(rows) < batch_size:
            return
        after = (rows[-1][1], rows[-1][0])


def traffic_scan(
    *,
    org: Organization,
    start: datetime,
    end: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Traffic:
    """Fold ``org``'s traffic in ``[start, end)`` into per model x category counters, per-model
    attempt reliability, observed chains and repeated-prompt counts (see the module docstring)."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    traffic = Traffic(window_start=start, window_end=end)
    cells = traffic.cells
    reliability: dict[str, Reliability] = defaultdict(Reliability)
    chains: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    digests: dict[str, int] = {}
    model_index: dict[str, int] = {}
    error = RequestLog.Status.ERROR
    for rows in _batches(org=org, start=start, end=end, batch_size=batch_size):
        if traffic.first_seen is None:
            traffic.first_seen = rows[0][1]
        traffic.rows_scanned += len(rows)
        for (
            _id,
            _created,
            model,
            category,
            status,
            route,
            latency_ms,
            ttft_ms,
            prompt_tokens,
            completion_tokens,
            cost,
            digest,
        ) in rows:
            route = route if isinstance(route, dict) else {}
            if not category:
                routed = route.get("category")
                category = routed if isinstance(routed, str) else UNCATEGORIZED
            cell = cells.get((model, category))
            if cell is None:
                cell = cells[(model, category)] = Cell()
            failed = status == error
            cell.requests += 1
            if failed:
                cell.errors += 1
            else:
                cell.prompt_tokens += prompt_tokens
                cell.completion_tokens += completion_tokens
                bucket = latency_bucket(latency_ms)
                cell.histogram[bucket] = cell.histogram.get(bucket, 0) + 1
                if ttft_ms is not None:
                    first = latency_bucket(ttft_ms)
                    cell.ttft_histogram[first] = cell.ttft_histogram.get(first, 0) + 1
            cell.cost_micros += cost
            if route.get("reason") == "fallback":
                cell.fallback_answers += 1
            attempts = route.get("attempts")
            if isinstance(attempts, list) and attempts:
                if len(attempts) > 1:
                    cell.multi_attempt += 1
                for attempt in attempts:
                    if not isinstance(attempt, dict):
                        continue
                    stats = reliability[str(attempt.get("model") or model)]
                    state = attempt.get("status")
                    if state == "skipped":
                        stats.skipped += 1
                        continue
                    stats.attempts += 1
                    if state == "error":
                        stats.failures += 1
            else:
                stats = reliability[model]
                stats.attempts += 1
                if failed:
                    stats.failures += 1
            chain = route.get("chain")
            if isinstance(chain, list) and chain:
                chains[category][tuple(str(m) for m in chain)] += 1
            if digest:
                index = model_index.get(model)
                if index is None:
                    index = model_index[model] = len(model_index) & _MODEL_MASK
                packed = digests.get(digest)
                digests[digest] = (
                    (1 << _MODEL_BITS) | index if packed is None else packed + (1 << _MODEL_BITS)
                )
            else:
                traffic.not_hashed += 1
    traffic.reliability = dict(reliability)
    traffic.chains = dict(chains)
    traffic.duplicates = _duplicates(digests, model_index)
    return traffic


def _duplicates(
    digests: Mapping[str, int], model_index: Mapping[str, int]
) -> dict[str, Duplicates]:
    names = {index: model for model, index in model_index.items()}
    out: dict[str, Duplicates] = defaultdict(Duplicates)
    repeats: dict[str, list[int]] = defaultdict(list)
    for packed in digests.values():
        count, model = packed >> _MODEL_BITS, names[packed & _MODEL_MASK]
        entry = out[model]
        entry.hashed_requests += count
        if count > 1:
            entry.repeated_prompts += 1
            entry.duplicate_requests += count - 1
            repeats[model].append(count)
    for model, counts in repeats.items():
        out[model].top_repeats = sorted(counts, reverse=True)[:5]
    return dict(out)


# --- from the rollups ---------------------------------------------------------------------------
DAY = UsageRollup.Granularity.DAY.value
HOUR = UsageRollup.Granularity.HOUR.value


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def day_buckets(*, start: datetime, end: datetime) -> list[datetime]:
    """The UTC day buckets from the one holding ``start`` to the one holding ``end``."""
    first, last = _day(start), _day(end)
    count = (last - first).days + 1
    return [first + timedelta(days=i) for i in range(count)]


def daily_model_errors(
    *, org: Organization, start: datetime, end: datetime
) -> dict[str, dict[datetime, tuple[int, int]]]:
    """Requests and errors per model and UTC day, from the daily rollups."""
    rows = (
        UsageRollup.objects.filter(
            organization=org,
            granularity=DAY,
            bucket_start__gte=_day(start),
            bucket_start__lte=end,
        )
        .values("model", "bucket_start")
        .annotate(n=Sum("requests"), e=Sum("errors"))
        .order_by()
    )
    out: dict[str, dict[datetime, tuple[int, int]]] = defaultdict(dict)
    for row in rows:
        out[row["model"]][row["bucket_start"].astimezone(UTC)] = (row["n"] or 0, row["e"] or 0)
    return dict(out)


@dataclass(frozen=True)
class KeySpend:
    api_key_id: int
    this_week_micros: int
    previous_week_micros: int
    daily: dict[datetime, int]


def key_spend(*, org: Organization, now: datetime) -> list[KeySpend]:
    """Each API key's spend (cost, would-be cost for BYOK) over the last 7 x 24 hourly buckets
    and the 7 x 24 before, plus its daily series, from the rollups."""
    week = timedelta(days=7)
    hour_now = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    split = hour_now + timedelta(hours=1) - week
    start = split - week
    rows = (
        UsageRollup.objects.filter(
            organization=org,
            granularity=HOUR,
            bucket_start__gte=start,
            api_key_id__isnull=False,
        )
        .values("api_key_id", "bucket_start")
        .annotate(cost=Sum("cost_micros"))
        .order_by()
    )
    this: dict[int, int] = defaultdict(int)
    previous: dict[int, int] = defaultdict(int)
    daily: dict[int, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        key_id = row["api_key_id"]
        if key_id is None:  # filtered out above; says so to the type checker
            continue
        bucket, cost = row["bucket_start"], row["cost"] or 0
        if bucket >= split:
            this[key_id] += cost
        else:
            previous[key_id] += cost
        daily[key_id][_day(bucket)] += cost
    return [
        KeySpend(key_id, this[key_id], previous[key_id], dict(daily[key_id]))
        for key_id in sorted(set(this) | set(previous))
    ]


def active_organization_ids(*, since: datetime) -> list[int]:
    """Organizations with traffic since ``since``, from the (small) daily rollups."""
    return sorted(
        set(
            UsageRollup.objects.filter(granularity=DAY, bucket_start__gte=_day(since))
            .values_list("organization_id", flat=True)
            .distinct()
        )
    )
