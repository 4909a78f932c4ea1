"""Celery tasks of the gateway: thin, idempotent, safe to retry."""

from __future__ import annotations

from celery import shared_task

from . import rollups


@shared_task(name="apps.gateway.tasks.rollups_update_task")
def rollups_update_task() -> int:
    """Fold new request-log rows into the usage rollups. Every minute (CELERY_BEAT_SCHEDULE)."""
    return rollups.rollups_update()
