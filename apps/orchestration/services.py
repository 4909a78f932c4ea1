"""Writes of an orchestration run: open it (one fan-out hold + the parent row, one transaction)
and close it (totals on the row + release of what the hold still has, one transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.wallet import services as wallet
from apps.wallet.models import Reservation

from .models import OrchestrationRun

# Outlives the longest run we allow; if this process dies, the sweeper frees what is left.
HOLD_TTL_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class RunTotals:
    status: str
    error_code: str
    cost_micros: int
    prompt_tokens: int
    completion_tokens: int
    calls: int
    failed_calls: int
    latency_ms: int


def run_open(
    *,
    api_key: ApiKey,
    request_id: str,
    mode: str,
    endpoint: str,
    model_ids: list[str],
    options: dict[str, Any],
    stream: bool,
    hold_micros: int,
    timeout_seconds: float,
) -> tuple[OrchestrationRun, Reservation | None]:
    """Hold the whole fan-out's worst case (InsufficientCredit, 402, when short) and record the
    run. ``hold_micros`` 0 (every call BYOK) holds nothing."""
    with transaction.atomic():
        hold = None
        if hold_micros > 0:
            hold = wallet.wallet_reserve(
                wallet=wallet.wallet_for_org(org=api_key.organization),
                amount_micros=hold_micros,
                request_id=request_id,
                expires_in=timedelta(seconds=timeout_seconds) + HOLD_TTL_MARGIN,
            )
        run = OrchestrationRun.objects.create(
            organization_id=api_key.organization_id,
            api_key=api_key,
            request_id=request_id,
            mode=mode,
            endpoint=endpoint,
            model_ids=model_ids,
            options=options,
            stream=stream,
            reserved_micros=hold_micros,
            created_at=timezone.now(),
        )
    return run, hold


def run_close(*, run: OrchestrationRun, hold: Reservation | None, totals: RunTotals) -> None:
    """Record how the run ended and free the part of the hold no child call carved out.
    Idempotent: a hold already used up or released is left as it is."""
    with transaction.atomic():
        if hold is not None:
            wallet.reservation_release(reservation=hold)
        OrchestrationRun.objects.filter(pk=run.pk).update(
            status=totals.status,
            error_code=totals.error_code,
            cost_micros=totals.cost_micros,
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            calls=totals.calls,
            failed_calls=totals.failed_calls,
            latency_ms=totals.latency_ms,
            finished_at=timezone.now(),
        )
