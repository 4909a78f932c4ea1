"""The billing page: who sees and does what, ledger filters and CSV export, tenancy."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.wallet import services
from apps.wallet.models import CreditPurchase, LedgerEntry, Wallet
from tests.conftest import Personas
from tests.wallet.conftest import usd

pytestmark = pytest.mark.django_db

BILLING = "/dashboard/billing/"


@pytest.fixture
def history(personas: Personas, fund: Callable[..., Wallet]) -> Wallet:
    """Acme: a grant, a charge, and a paid purchase (credited as the webhook would)."""
    wallet = fund(personas.org, 10)
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="=cmd|calc", expires_in=timedelta(minutes=1)
    )
    services.reservation_settle(reservation=res, actual_micros=250_000)
    CreditPurchase.objects.create(
        public_id="pur_acme1",
        organization=personas.org,
        wallet=wallet,
        amount_micros=usd(25),
        stripe_checkout_session_id="cs_test_acme1",
        created_by=personas.owner,
    )
    services.purchase_credit(
        public_id="pur_acme1",
        checkout_session_id="cs_test_acme1",
        payment_intent_id="pi_test_acme1",
        amount_cents=2500,
        currency="usd",
    )
    return wallet


def test_billing_page_for_owner_shows_balance_history_and_form(
    personas: Personas, history: Wallet
) -> None:
    response = personas.client(personas.owner).get(BILLING)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="balance-available" data-micros="34750000"' in html
    assert "$34.75" in html
    assert "Continue to payment" in html
    for preset in ("$10", "$25", "$50", "$100"):
        assert preset in html
    assert "pur_acme1" in html
    assert f"{BILLING}purchases/pur_acme1/receipt/" in html
    assert 'id="ledger"' in html


def test_member_sees_balance_only_and_cannot_buy(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.member)
    html = client.get(BILLING).content.decode()
    assert 'id="balance-available" data-micros="34750000"' in html
    assert "Continue to payment" not in html
    assert "pur_acme1" not in html
    assert 'id="ledger"' not in html
    assert client.post(BILLING, {"amount": "25", "currency": "usd"}).status_code == 403
    assert CreditPurchase.objects.count() == 1
    for path in (
        f"{BILLING}purchases/pur_acme1/",
        f"{BILLING}purchases/pur_acme1/receipt/",
        f"{BILLING}ledger.csv",
        f"{BILLING}return/?session_id=cs_test_acme1",
    ):
        assert client.get(path).status_code == 403, path
    assert client.post(f"{BILLING}alert/", {"threshold_usd": "5"}).status_code == 403


def test_outsider_gets_404_for_another_orgs_purchase(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.outsider)  # owner of Globex
    for path in (
        f"{BILLING}purchases/pur_acme1/",
        f"{BILLING}purchases/pur_acme1/receipt/",
        f"{BILLING}return/?session_id=cs_test_acme1",
    ):
        assert client.get(path).status_code == 404, path
    # Their own billing page shows their own (empty) wallet, not Acme's.
    html = client.get(BILLING).content.decode()
    assert 'data-micros="0"' in html
    assert "pur_acme1" not in html
    csv_text = b"".join(client.get(f"{BILLING}ledger.csv").streaming_content).decode()
    assert csv_text.splitlines()[1:] == []


def test_anonymous_is_sent_to_login(history: Wallet) -> None:
    from django.test import Client

    response = Client().get(BILLING)
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_receipt_only_for_paid_purchases(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.admin)
    receipt = client.get(f"{BILLING}purchases/pur_acme1/receipt/")
    assert receipt.status_code == 200
    assert "pi_test_acme1" in receipt.content.decode()
    CreditPurchase.objects.create(
        public_id="pur_pending",
        organization=personas.org,
        wallet=history,
        amount_micros=usd(10),
    )
    assert client.get(f"{BILLING}purchases/pur_pending/receipt/").status_code == 404
    assert (
        "Waiting for the payment" in client.get(f"{BILLING}purchases/pur_pending/").content.decode()
    )


def test_ledger_filters(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.owner)
    html = client.get(BILLING, {"kind": "charge"}).content.decode()
    assert "=cmd|calc" in html
    assert "pur_acme1 Stripe payment" not in html
    html = client.get(BILLING, {"kind": "purchase"}).content.decode()
    assert "Stripe payment pi_test_acme1" in html
    assert "=cmd|calc" not in html
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    html = client.get(BILLING, {"date_from": tomorrow}).content.decode()
    assert "No ledger entries match these filters" in html
    bad = client.get(BILLING, {"date_from": tomorrow, "date_to": "2020-01-01"}).content.decode()
    assert "The end date is before the start date." in bad


def test_ledger_csv_export(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.owner)
    response = client.get(f"{BILLING}ledger.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["kind"] for r in rows] == ["purchase", "charge", "adjustment"]
    assert [r["amount_micros"] for r in rows] == ["25000000", "-250000", "10000000"]
    assert rows[0]["purchase"] == "pur_acme1"
    assert rows[1]["request_id"] == "'=cmd|calc"  # no formula injection into spreadsheets
    assert rows[0]["balance_after_usd"] == "34.750000"

    filtered = client.get(f"{BILLING}ledger.csv", {"kind": "charge"})
    rows = list(csv.DictReader(io.StringIO(b"".join(filtered.streaming_content).decode())))
    assert [r["kind"] for r in rows] == ["charge"]


def test_low_balance_alert_form(personas: Personas, history: Wallet) -> None:
    client = personas.client(personas.admin)
    response = client.post(f"{BILLING}alert/", {"threshold_usd": "50"}, follow=True)
    assert "We will email you below $50.00" in response.content.decode()
    wallet = Wallet.objects.get(pk=history.pk)
    assert wallet.low_balance_threshold_micros == usd(50)
    assert AuditEvent.objects.filter(action="wallet.low_balance_alert").exists()
    response = client.post(f"{BILLING}alert/", {"threshold_usd": "-1"}, follow=True)
    assert "at least $0.01" in response.content.decode()
    client.post(f"{BILLING}alert/", {"threshold_usd": ""})
    assert Wallet.objects.get(pk=history.pk).low_balance_threshold_micros is None


def test_purchase_credit_service_is_exactly_once(personas: Personas, history: Wallet) -> None:
    again = services.purchase_credit(
        public_id="pur_acme1",
        checkout_session_id="cs_test_acme1",
        payment_intent_id="pi_test_acme1",
        amount_cents=2500,
        currency="usd",
    )
    assert again.status == CreditPurchase.Status.PAID
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PURCHASE).count() == 1
    from llmwise.errors import Conflict

    with pytest.raises(Conflict):
        services.purchase_credit(
            public_id="pur_acme1",
            checkout_session_id="cs_test_other",
            payment_intent_id="pi_test_acme1",
            amount_cents=2500,
            currency="usd",
        )
