"""Expired holds (a worker killed between reserve and settle) are released by the sweeper:
the Celery task, the management command, and the embedded scheduler that stands in for beat."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command

from apps.wallet import selectors, services
from apps.wallet.models import Reservation, Wallet
from apps.wallet.tasks import release_expired_reservations
from llmwise.embedded import EmbeddedScheduler
from tests.wallet.conftest import usd

SCHEDULE_NAME = "wallet-release-expired-reservations"
SCHEDULE_TASK = "apps.wallet.tasks.release_expired_reservations"


def _crashed_worker_holds(wallet: Wallet) -> tuple[Reservation, Reservation]:
    """Two holds; the first one's worker 'died' and its deadline has passed."""
    dead = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(3), request_id="dead", expires_in=timedelta(seconds=30)
    )
    Reservation.objects.filter(pk=dead.pk).update(expires_at=dead.created_at - timedelta(seconds=1))
    alive = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(2), request_id="alive", expires_in=timedelta(minutes=5)
    )
    return dead, alive


def _assert_swept(wallet: Wallet, dead: Reservation, alive: Reservation) -> None:
    wallet.refresh_from_db()
    assert Reservation.objects.get(pk=dead.pk).status == Reservation.Status.EXPIRED
    assert Reservation.objects.get(pk=alive.pk).status == Reservation.Status.HELD
    assert (wallet.balance_micros, wallet.reserved_micros) == (usd(10), usd(2))
    assert selectors.wallet_audit_problems() == []


def test_beat_schedule_runs_the_sweeper_every_minute() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE[SCHEDULE_NAME]
    assert entry["task"] == release_expired_reservations.name
    assert float(entry["schedule"]) == 60.0


@pytest.mark.django_db
def test_celery_task_releases_expired_holds(wallet: Wallet) -> None:
    dead, alive = _crashed_worker_holds(wallet)
    result = release_expired_reservations.delay()  # eager in tests: the real Celery call path
    assert result.get() == 1
    _assert_swept(wallet, dead, alive)
    assert release_expired_reservations.delay().get() == 0  # idempotent


@pytest.mark.django_db
def test_command_releases_expired_holds(wallet: Wallet, capsys: pytest.CaptureFixture[str]) -> None:
    dead, alive = _crashed_worker_holds(wallet)
    call_command("release_expired_reservations")
    assert "Released 1 expired reservation(s)." in capsys.readouterr().out
    _assert_swept(wallet, dead, alive)


@pytest.mark.django_db(transaction=True)
def test_embedded_scheduler_runs_the_sweeper(wallet: Wallet) -> None:
    dead, alive = _crashed_worker_holds(wallet)
    scheduler = EmbeddedScheduler(
        schedule={SCHEDULE_NAME: settings.CELERY_BEAT_SCHEDULE[SCHEDULE_NAME]}
    )
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while scheduler.runs[SCHEDULE_NAME] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    assert scheduler.runs[SCHEDULE_NAME] >= 1
    _assert_swept(wallet, dead, alive)


def test_embedded_default_schedule_includes_the_sweeper() -> None:
    assert SCHEDULE_NAME in EmbeddedScheduler().schedule


def test_sweeper_task_is_registered_in_a_fresh_process() -> None:
    """The embedded scheduler looks tasks up by name in a process where nothing imported them."""
    code = (
        "import django; django.setup(); from celery import current_app; "
        f"print({SCHEDULE_TASK!r} in current_app.tasks)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "llmwise.settings.test"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
