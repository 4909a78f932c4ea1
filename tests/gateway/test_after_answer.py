"""A chat call's answer goes out first; its settle and log row are written right after.

Served exactly as production serves it (``live_gateway_as_deployed``: nothing holds the last
bytes of a response back). To show what the answer does and does not wait for, a second
database session locks the request-log table: the settle + log statement cannot run while the
lock is held, so the answer arriving meanwhile proves it did not wait, and the hold still being
there proves the money had not moved yet. Nothing of ours is patched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import httpx
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

FUNDS = 1_000_000
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 20,
}


@pytest.fixture
def org_secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="after the answer")
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret


@contextmanager
def request_log_locked() -> Iterator[None]:
    """Another session holds ``gateway_requestlog`` in EXCLUSIVE mode: reads go on, writes wait."""
    if connection.vendor != "postgresql":
        pytest.skip("the settle-after-answer path runs on PostgreSQL")
    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"],
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
    ) as other:
        other.execute("LOCK TABLE gateway_requestlog IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            other.rollback()


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat"])
def test_the_answer_goes_out_before_its_settle_which_follows_at_once(
    live_gateway_as_deployed: LiveGateway, org_secret: str, personas: Personas, path: str
) -> None:
    base = live_gateway_as_deployed.url
    looked_up: dict[str, Any] = {}
    with request_log_locked():
        answer = httpx.post(f"{base}{path}", json=BODY, headers=_auth(org_secret), timeout=5)
        assert answer.status_code == 200, answer.text
        request_id = answer.headers["x-request-id"]
        charged = int(answer.headers["x-llmwise-cost-micros"])
        assert charged > 0
        # Answered, not booked yet: the credit is still held and no row is there.
        assert Reservation.objects.get(request_id=request_id).status == Reservation.Status.HELD
        assert not RequestLog.objects.filter(request_id=request_id).exists()
        assert Wallet.objects.get(organization=personas.org).reserved_micros > 0

        # A client reconciling in that instant waits for the record instead of a 404.
        def look_up() -> None:
            looked_up["response"] = httpx.get(
                f"{base}/api/v1/requests/{request_id}", headers=_auth(org_secret), timeout=10
            )

        waiter = threading.Thread(target=look_up)
        waiter.start()
        time.sleep(0.3)
        assert "response" not in looked_up
    waiter.join(10)
    record = looked_up["response"]
    assert record.status_code == 200, record.text
    assert record.json()["id"] == request_id
    assert record.json()["charged_micros"] == charged
    assert Reservation.objects.get(request_id=request_id).status == Reservation.Status.SETTLED
    assert -LedgerEntry.objects.get(request_id=request_id).amount_micros == charged
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - charged, 0)
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def test_a_call_still_with_its_provider_is_in_progress_and_an_outsider_sees_nothing(
    live_gateway_as_deployed: LiveGateway,
    org_secret: str,
    personas: Personas,
    faults: FaultControl,
) -> None:
    base = live_gateway_as_deployed.url
    outsider = account_services.api_key_create(
        org=personas.other_org, name="o", created_by=personas.outsider
    ).secret
    faults.set(provider="openai", fault="none", latency_ms=3500)
    answered: dict[str, Any] = {}

    def call() -> None:
        answered["response"] = httpx.post(
            f"{base}/v1/chat/completions", json=BODY, headers=_auth(org_secret), timeout=15
        )

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not (held := Reservation.objects.filter(organization=personas.org).first()):
        assert time.monotonic() < deadline, "the call never held its credit"
        time.sleep(0.02)
    request_id = held.request_id
    stranger = httpx.get(f"{base}/api/v1/requests/{request_id}", headers=_auth(outsider))
    assert stranger.status_code == 404
    assert stranger.json()["error"]["code"] == "request_not_found"
    pending = httpx.get(
        f"{base}/api/v1/requests/{request_id}", headers=_auth(org_secret), timeout=10
    )
    assert pending.status_code == 404
    assert pending.json()["error"]["code"] == "request_in_progress"
    caller.join(15)
    assert answered["response"].status_code == 200
    assert answered["response"].headers["x-request-id"] == request_id
    done = httpx.get(f"{base}/api/v1/requests/{request_id}", headers=_auth(org_secret))
    assert done.status_code == 200
    charged = int(answered["response"].headers["x-llmwise-cost-micros"])
    assert done.json()["charged_micros"] == charged
