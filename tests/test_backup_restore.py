"""Backup and restore of PostgreSQL, the documented way (docs/backup.md).

Real data is made through the product (a Stripe purchase paid on the fake's hosted page and
credited by its signed webhook, gateway calls over HTTP to the sandbox upstream, a hold still
open), then ``manage.py db_backup`` dumps the test database, ``manage.py db_restore`` restores
the dump into a new scratch database and ``manage.py wallet_audit`` runs against the copy — each
a separate process with ``DATABASE_URL`` pointing where an operator would point it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import CreditPurchase, LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import sandbox  # noqa: F401
from tests.wallet.stripe_server import StripeServer, stripe_env, stripe_server  # noqa: F401

ON_POSTGRESQL = connection.vendor == "postgresql"
TOOLS = all(shutil.which(tool) for tool in ("pg_dump", "pg_restore"))

needs_postgresql = pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="pg_dump/pg_restore back up PostgreSQL; this run uses the embedded SQLite default, "
    "which is backed up by copying its file (docs/backup.md)",
)
needs_tools = pytest.mark.skipif(
    not TOOLS, reason="PostgreSQL's client tools (pg_dump, pg_restore) are not installed here"
)

MODEL = "gpt-4o-mini"


def _manage(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in a new process, with the operator's default settings."""
    env = dict(os.environ, DATABASE_URL=database_url)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _url(name: str) -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def _connect(name: str) -> psycopg.Connection[Any]:
    db = connection.settings_dict
    return psycopg.connect(
        dbname=name,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        autocommit=True,
    )


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A new, empty database next to the test database; dropped afterwards."""
    name = f"{connection.settings_dict['NAME']}_restore_{secrets.token_hex(4)}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _buy_credit(client: Client) -> None:
    """Buy $25 on the billing page and pay on the fake Stripe's hosted page; its signed webhook
    credits the wallet over HTTP before the payment page answers."""
    response = client.post("/dashboard/billing/", {"amount": "25", "currency": "usd"})
    assert response.status_code == 302, response.content.decode()[:500]
    checkout = response["Location"]
    page = httpx.get(checkout, timeout=30)
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    parts = urlsplit(checkout)
    paid = httpx.post(
        f"{parts.scheme}://{parts.netloc}{action[1]}",
        data={"card_outcome": "success", "email": "payer@example.com"},
        timeout=30,
    )
    assert paid.status_code == 303


def _chat(secret: str, content: str) -> None:
    response = Client().post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 40},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.content


def _source_counts() -> dict[str, int]:
    return {
        model._meta.db_table: model._default_manager.count()
        for model in apps.get_models()
        if model._meta.managed and not model._meta.proxy
    }


WALLETS_SQL = (
    "SELECT id, organization_id, balance_micros, reserved_micros, spent_micros "
    "FROM wallet_wallet ORDER BY id"
)


@needs_postgresql
@needs_tools
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
def test_a_restored_dump_has_every_row_and_balanced_books(
    personas: Personas,
    stripe_env: StripeServer,  # noqa: F811
    sandbox: SandboxServer,  # noqa: F811
    settings: Any,
    scratch_database: str,
    tmp_path: Path,
) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    _buy_credit(personas.client(personas.owner))
    assert CreditPurchase.objects.get().status == CreditPurchase.Status.PAID
    secret = account_services.api_key_create(
        org=personas.org, name="backup", created_by=personas.owner
    ).secret
    for n in range(3):
        _chat(secret, f"Question {n} before the backup")
    wallet = Wallet.objects.get(organization=personas.org)
    hold = wallet_services.wallet_reserve(
        wallet=wallet,
        amount_micros=20_000,
        request_id="req_in_flight_during_backup",
        expires_in=timedelta(minutes=10),
    )
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 20_000
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 3
    assert RequestLog.objects.count() == 3
    counts = _source_counts()
    wallets = [
        tuple(row)
        for row in Wallet.objects.order_by("id").values_list(
            "id", "organization_id", "balance_micros", "reserved_micros", "spent_micros"
        )
    ]

    dump = tmp_path / "llmwise.dump"
    source = connection.settings_dict["NAME"]
    backup = _manage("db_backup", str(dump), database_url=_url(source))
    assert backup.returncode == 0, backup.stderr
    assert f"Backup written: {dump}" in backup.stdout
    assert dump.stat().st_size > 0

    restore = _manage("db_restore", str(dump), database_url=_url(scratch_database))
    assert restore.returncode == 0, restore.stderr
    assert "1 held reservations, 3 logged requests" in restore.stdout
    assert "wallet_audit: OK" in restore.stdout

    audit = _manage("wallet_audit", database_url=_url(scratch_database))
    assert audit.returncode == 0, audit.stderr
    assert f"OK: {len(wallets)} wallet(s) balance." in audit.stdout

    with _connect(scratch_database) as copy:
        restored_counts = {
            table: copy.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # noqa: S608
            for table in counts
        }
        assert restored_counts == counts
        assert [tuple(row) for row in copy.execute(WALLETS_SQL).fetchall()] == wallets
        held = copy.execute(
            "SELECT amount_micros, status FROM wallet_reservation WHERE request_id = %s",
            [hold.request_id],
        ).fetchone()
        assert held == (20_000, "held")
        # The audit really looks at the copy: break one balance there and it must say so.
        copy.execute(
            "UPDATE wallet_wallet SET balance_micros = balance_micros + 1 WHERE id = %s",
            [wallet.pk],
        )
    broken = _manage("wallet_audit", database_url=_url(scratch_database))
    assert broken.returncode == 1
    assert f"wallet {wallet.pk} ({personas.org.slug}): balance" in broken.stderr
    # The original is untouched by all of this.
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())

    # A restore never lands on top of existing data.
    again = _manage("db_restore", str(dump), database_url=_url(scratch_database))
    assert again.returncode == 1
    assert "is not empty" in again.stderr
    assert Reservation.objects.get(pk=hold.pk).status == Reservation.Status.HELD


def test_backup_of_the_embedded_sqlite_database_is_refused_with_directions(
    tmp_path: Path,
) -> None:
    result = _manage(
        "db_backup", str(tmp_path / "x.dump"), database_url=f"sqlite:///{tmp_path / 'x.db'}"
    )
    assert result.returncode == 1
    assert "This needs PostgreSQL" in result.stderr
    assert "docs/backup.md" in result.stderr
    assert not (tmp_path / "x.dump").exists()
