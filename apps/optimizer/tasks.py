"""Celery tasks of the optimizer: thin, idempotent, safe to retry."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from apps.accounts.models import Organization
from apps.gateway.rollups import rollups_update

from . import aggregation, replay, services
from .models import MAX_WINDOW_DAYS


@shared_task(name="apps.optimizer.tasks.optimizer_run_all_task")
def optimizer_run_all_task() -> int:
    """Fan out one job per organization with traffic in the longest window (CELERY_BEAT_SCHEDULE,
    daily). Returns how many were queued."""
    rollups_update()  # an org whose traffic began since the last minutely run counts too
    since = timezone.now() - timedelta(days=MAX_WINDOW_DAYS)
    org_ids = aggregation.active_organization_ids(since=since)
    for org_id in org_ids:
        optimizer_run_org_task.delay(org_id, "schedule")
    return len(org_ids)


@shared_task(name="apps.optimizer.tasks.optimizer_run_org_task")
def optimizer_run_org_task(org_id: int, trigger: str = "schedule") -> int | None:
    """Aggregate one organization's traffic and refresh its recommendations."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return None
    return services.optimizer_run(org=org, trigger=trigger).pk


@shared_task(name="apps.optimizer.tasks.replay_run_task")
def replay_run_task(run_id: int) -> None:
    """Execute a confirmed replay-lab run (no-op when it is not queued)."""
    replay.replay_execute(run_id=run_id)


@shared_task(name="apps.optimizer.tasks.optimizer_digest_all_task")
def optimizer_digest_all_task() -> int:
    """Weekly: queue the digest of every organization that opted in."""
    org_ids = services.digest_org_ids()
    for org_id in org_ids:
        optimizer_digest_org_task.delay(org_id)
    return len(org_ids)


@shared_task(name="apps.optimizer.tasks.optimizer_digest_org_task")
def optimizer_digest_org_task(org_id: int) -> bool:
    org = Organization.objects.filter(pk=org_id).first()
    return org is not None and services.digest_send(org=org)
