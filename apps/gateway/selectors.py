"""Reads of the model catalog and of the request log.

The catalog is global (not tenant-owned): every organization sees the same models; what a key may
use is a policy applied on top by the caller. The request log is tenant-owned: its readers take
the organization first, and another organization's request is simply not found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic as time_monotonic
from time import sleep

from django.db.models import Q, QuerySet

from apps.accounts.models import Organization
from apps.wallet.models import Reservation
from llmwise.errors import NotFound

from .models import CatalogModel, ModelAlias, RequestLog


def catalog_resolve(*, model_id: str) -> CatalogModel | None:
    """The enabled catalog model named ``model_id`` directly or through an alias, else ``None``.

    An id wins over an alias of the same spelling, so adding an alias can never hijack a model.
    """
    model = CatalogModel.objects.filter(pk=model_id, enabled=True).first()
    if model is not None:
        return model
    alias = (
        ModelAlias.objects.select_related("model")
        .filter(alias=model_id, model__enabled=True)
        .first()
    )
    return alias.model if alias is not None else None


# What a model id or alias resolved to, remembered in-process like the enabled catalog below:
# every request resolves its model, and the answer changes only when an admin edits the catalog.
# Saving or deleting a model or an alias forgets everything in this process at once (signals in
# apps.py); other processes see the edit within CATALOG_CACHE_SECONDS.
_RESOLVE_CACHE_MAX_ENTRIES = 1_000
_resolved: dict[str, tuple[float, CatalogModel | None]] = {}  # id → (monotonic expiry, model)


async def acatalog_resolve(*, model_id: str) -> CatalogModel | None:
    """:func:`catalog_resolve` for the async hot path (same rules; no query while cached)."""
    now = time_monotonic()
    cached = _resolved.get(model_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    model = await CatalogModel.objects.filter(pk=model_id, enabled=True).afirst()
    if model is None:
        alias = await (
            ModelAlias.objects.select_related("model")
            .filter(alias=model_id, model__enabled=True)
            .afirst()
        )
        model = alias.model if alias is not None else None
    if len(_resolved) >= _RESOLVE_CACHE_MAX_ENTRIES:  # unknown ids must not grow it forever
        _resolved.clear()
    _resolved[model_id] = (now + CATALOG_CACHE_SECONDS, model)
    return model


def catalog_list(*, include_disabled: bool = False) -> QuerySet[CatalogModel]:
    """Catalog models in a stable order (provider, id); enabled ones unless asked otherwise."""
    models = CatalogModel.objects.all()
    if not include_disabled:
        models = models.filter(enabled=True)
    return models.order_by("provider", "id")


# --- request log ------------------------------------------------------------------------------
# Keyset pagination over (created_at, id), newest first: pages stay stable while new rows arrive
# (the dashboard polls for them) and no page costs a COUNT over a large log.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_CURSOR = re.compile(r"^(\d{1,18})_(\d{1,18})$")


@dataclass(frozen=True)
class RequestLogFilters:
    """What a reader may narrow the log by; ``None`` means "any".

    Dates are inclusive UTC calendar days; the key is named by its (unique, non-secret) prefix,
    which both the dashboard and API clients know.
    """

    model: str | None = None
    api_key_prefix: str | None = None
    status: str | None = None
    byok: bool | None = None
    date_from: date | None = None
    date_to: date | None = None

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class RequestLogCursor:
    """Where a page ends: the (created_at, id) of its last row, as an opaque string."""

    created_at: datetime
    pk: int

    def encode(self) -> str:
        return f"{(self.created_at - _EPOCH) // _ONE_MICROSECOND}_{self.pk}"

    @classmethod
    def decode(cls, token: str) -> RequestLogCursor | None:
        """The cursor in ``token``, or ``None`` when it is not one we could have issued."""
        match = _CURSOR.match(token)
        if match is None:
            return None
        try:
            created_at = _EPOCH + timedelta(microseconds=int(match[1]))
        except OverflowError:
            return None
        return cls(created_at=created_at, pk=int(match[2]))


@dataclass(frozen=True)
class RequestLogPage:
    rows: list[RequestLog]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def request_logs_of(
    *, org: Organization, filters: RequestLogFilters | None = None
) -> QuerySet[RequestLog]:
    """The organization's request log, newest first, narrowed by ``filters``."""
    filters = filters or RequestLogFilters()
    logs = RequestLog.objects.filter(organization=org).select_related("api_key")
    if filters.model:
        logs = logs.filter(model=filters.model)
    if filters.api_key_prefix:
        logs = logs.filter(api_key__prefix=filters.api_key_prefix)
    if filters.status:
        logs = logs.filter(status=filters.status)
    if filters.byok is not None:
        logs = logs.filter(byok=filters.byok)
    if filters.date_from is not None:
        start = datetime.combine(filters.date_from, time.min, tzinfo=UTC)
        logs = logs.filter(created_at__gte=start)
    if filters.date_to is not None:
        end = datetime.combine(filters.date_to, time.min, tzinfo=UTC) + timedelta(days=1)
        logs = logs.filter(created_at__lt=end)
    return logs.order_by("-created_at", "-id")


def request_log_page(
    *,
    org: Organization,
    filters: RequestLogFilters | None = None,
    limit: int,
    cursor: RequestLogCursor | None = None,
) -> RequestLogPage:
    """Up to ``limit`` rows older than ``cursor`` (from the newest without one)."""
    logs = request_logs_of(org=org, filters=filters)
    if cursor is not None:
        logs = logs.filter(
            Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.pk)
        )
    rows = list(logs[: limit + 1])
    if len(rows) <= limit:
        return RequestLogPage(rows=rows, next_cursor=None)
    rows = rows[:limit]
    last = rows[-1]
    return RequestLogPage(
        rows=rows, next_cursor=RequestLogCursor(created_at=last.created_at, pk=last.pk).encode()
    )


def request_log_of(*, org: Organization, request_id: str) -> RequestLog:
    """One of ``org``'s logged requests; another tenant's is simply not found."""
    log = (
        RequestLog.objects.filter(organization=org, request_id=request_id)
        .select_related("api_key")
        .first()
    )
    if log is None:
        raise NotFound(f"No request {request_id!r} in this organization.", code="request_not_found")
    return log


# A chat call is answered first and booked (settle + log) a moment later: see calls.chat_call.
BOOKING_WAIT_SECONDS = 2.0


def request_log_booked(
    *, org: Organization, request_id: str, wait_seconds: float = BOOKING_WAIT_SECONDS
) -> RequestLog:
    """:func:`request_log_of`, waiting up to ``wait_seconds`` for a call whose credit is still
    held: one answered an instant ago, its settle and log row on their way. Still held after
    that (the provider has not answered yet): not found, saying the request is in progress."""
    deadline = time_monotonic() + wait_seconds
    pause = 0.005
    while True:
        try:
            return request_log_of(org=org, request_id=request_id)
        except NotFound:
            held = Reservation.objects.filter(
                organization=org, request_id=request_id, status=Reservation.Status.HELD
            ).exists()
            if not held:  # never held, or booked since the first look: one more look decides
                return request_log_of(org=org, request_id=request_id)
            if time_monotonic() >= deadline:
                raise NotFound(
                    f"Request {request_id!r} is still in progress: its record appears once it "
                    "has been answered and billed.",
                    code="request_in_progress",
                ) from None
            sleep(pause)
            pause = min(pause * 2, 0.05)


# --- the enabled catalog, cached in-process for the auto-router --------------------------------
# ``model: "auto"`` looks at every enabled model on every request; a few seconds of staleness
# (an admin's price edit or a newly disabled model showing up that much later) is worth not
# querying the catalog on the hot path. Health, the part that changes by the second, is not
# cached here: the auto-router asks ``routing.health.healthy`` per decision.
CATALOG_CACHE_SECONDS = 5.0
_catalog_cache: tuple[datetime, tuple[CatalogModel, ...]] | None = None


def _catalog_cached_fresh(max_age_seconds: float) -> tuple[CatalogModel, ...] | None:
    cached = _catalog_cache
    if cached is None:
        return None
    loaded_at, models = cached
    if datetime.now(UTC) - loaded_at >= timedelta(seconds=max_age_seconds):
        return None
    return models


def catalog_enabled_cached(
    *, max_age_seconds: float = CATALOG_CACHE_SECONDS
) -> tuple[CatalogModel, ...]:
    """The enabled catalog (stable order, as :func:`catalog_list`), at most ``max_age_seconds``
    old. The tuple is shared: treat the models as read-only."""
    global _catalog_cache
    models = _catalog_cached_fresh(max_age_seconds)
    if models is None:
        models = tuple(catalog_list())
        _catalog_cache = (datetime.now(UTC), models)
    return models


async def acatalog_enabled_cached(
    *, max_age_seconds: float = CATALOG_CACHE_SECONDS
) -> tuple[CatalogModel, ...]:
    """:func:`catalog_enabled_cached` for the async hot path (one query when stale)."""
    global _catalog_cache
    models = _catalog_cached_fresh(max_age_seconds)
    if models is None:
        models = tuple([model async for model in catalog_list()])
        _catalog_cache = (datetime.now(UTC), models)
    return models


def catalog_cache_clear(**_signal: object) -> None:
    """Forget the cached catalog and resolutions (tests that reseed it; a catalog edit)."""
    global _catalog_cache
    _catalog_cache = None
    _resolved.clear()
