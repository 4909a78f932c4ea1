"""Celery tasks of the wallet: thin, idempotent, safe to retry."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="apps.wallet.tasks.release_expired_reservations")
def release_expired_reservations() -> int:
    """Release holds whose request never settled (e.g. a crashed worker). Every minute."""
    return services.reservations_release_expired()
