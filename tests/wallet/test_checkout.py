"""Buying credit through Stripe Checkout, against the fake Stripe over real HTTP.

The dashboard is driven with Django's test client; the "customer" pays on the fake's hosted
page over HTTP; the fake signs and POSTs the webhook to our server over HTTP.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import stripe
from django.db import connection, transaction
from django.test import Client

from apps.accounts.models import AuditEvent
from apps.wallet import selectors, services
from apps.wallet.models import CreditPurchase, LedgerEntry, Wallet
from apps.wallet.stripe_sandbox import sign
from tests.conftest import Personas
from tests.wallet.conftest import needs_postgres, usd
from tests.wallet.stripe_server import SECRET_KEY, WEBHOOK_SECRET, StripeServer

pytestmark = pytest.mark.django_db(transaction=True)

BILLING = "/dashboard/billing/"


def _start(client: Client, **data: str) -> tuple[CreditPurchase, str]:
    """Submit the buy form; returns the pending purchase and the hosted checkout URL."""
    response = client.post(BILLING, {"amount": "25", "currency": "usd", **data})
    assert response.status_code == 302, response.content.decode()[:2000]
    purchase = CreditPurchase.objects.latest("created_at")
    assert purchase.status == CreditPurchase.Status.PENDING
    assert response["Location"] == purchase.checkout_url
    return purchase, purchase.checkout_url


def _pay(checkout_url: str) -> str:
    """Open the hosted page and press "Pay with test card"; returns the success redirect."""
    page = httpx.get(checkout_url, timeout=30)
    assert page.status_code == 200
    assert "Pay with test card" in page.text
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    parts = urlsplit(checkout_url)
    response = httpx.post(
        f"{parts.scheme}://{parts.netloc}{action.group(1)}",
        data={"card_outcome": "success", "email": "x@example.com"},
        timeout=30,
    )
    assert response.status_code == 303
    return response.headers["location"]


def _return(client: Client, success_url: str) -> str:
    """The browser comes back from Stripe; returns the purchase page's HTML."""
    parts = urlsplit(success_url)
    response = client.get(f"{parts.path}?{parts.query}", follow=True)
    assert response.status_code == 200
    return response.content.decode()


def _credits(purchase: CreditPurchase) -> int:
    return LedgerEntry.objects.filter(purchase=purchase, kind=LedgerEntry.Kind.PURCHASE).count()


def _balance(personas: Personas) -> int:
    return Wallet.objects.get(organization=personas.org).balance_micros


def _event(server: StripeServer, event_type: str, session_id: str | None = None) -> dict[str, Any]:
    events = [
        e
        for e in server.sandbox.events.values()
        if e["type"] == event_type
        and (session_id is None or e["data"]["object"].get("id") == session_id)
    ]
    assert events, f"no {event_type} event"
    return events[-1]


def _post_webhook(payload: str, signature: str | None) -> Any:
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return Client().post(
        "/webhooks/stripe/", data=payload, content_type="application/json", **headers
    )


# --- the happy path -------------------------------------------------------------------------
def test_owner_buys_preset_credit_and_sees_the_balance_rise(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    purchase, checkout_url = _start(client, amount="25")
    assert checkout_url.startswith(stripe_env.api_base + "/checkout/cs_test_")
    assert purchase.stripe_checkout_session_id.startswith("cs_test_")
    assert purchase.created_by == personas.owner
    assert purchase.amount_micros == usd(25)
    session = stripe_env.sandbox.sessions[purchase.stripe_checkout_session_id]
    assert (session["amount_total"], session["currency"]) == (2500, "usd")
    assert session["client_reference_id"] == purchase.public_id

    success_url = _pay(checkout_url)
    html = _return(client, success_url)
    assert "Payment received" in html
    assert "$25.00" in html

    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.PAID
    assert purchase.stripe_payment_intent_id.startswith("pi_test_")
    assert _credits(purchase) == 1
    assert _balance(personas) == usd(25)
    deliveries = [d for d in stripe_env.sandbox.deliveries if d["type"].startswith("checkout")]
    assert deliveries[-1]["status"] == 200
    actions = set(
        AuditEvent.objects.filter(organization=personas.org).values_list("action", flat=True)
    )
    assert {"purchase.start", "purchase.paid"} <= actions

    page = client.get(BILLING).content.decode()
    assert 'id="balance-available" data-micros="25000000"' in page
    assert (
        purchase.public_id
        in client.get(f"{BILLING}purchases/{purchase.public_id}/receipt/").content.decode()
    )
    assert selectors.wallet_audit_problems() == []


def test_admin_buys_a_custom_amount(personas: Personas, stripe_env: StripeServer) -> None:
    client = personas.client(personas.admin)
    purchase, url = _start(client, amount="custom", custom_usd="12.34")
    assert purchase.amount_micros == 12_340_000
    assert stripe_env.sandbox.sessions[purchase.stripe_checkout_session_id]["amount_total"] == 1234
    _return(client, _pay(url))
    assert _balance(personas) == 12_340_000


def test_webhook_before_browser_return_credits_once_and_shows_paid(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    purchase, url = _start(client)
    success_url = _pay(url)  # the fake delivers the webhook before redirecting
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.PAID  # before the browser is back
    event = _event(stripe_env, "checkout.session.completed", purchase.stripe_checkout_session_id)
    # Stripe delivers again (one after the other here; at the same moment, on PostgreSQL, in
    # test_same_webhook_delivered_concurrently_credits_once: SQLite's in-memory test database
    # refuses concurrent writers with "table is locked", which answers 503).
    statuses = [
        stripe_env.control("POST", f"events/{event['id']}/deliver").json()["statuses"]
        for _ in range(3)
    ]
    assert statuses == [[200], [200], [200]]
    assert "Payment received" in _return(client, success_url)
    assert _credits(purchase) == 1
    assert _balance(personas) == usd(25)


def test_browser_return_before_webhook_shows_pending_then_paid(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    stripe_env.control("POST", "config", json={"auto_deliver": False})
    purchase, url = _start(client)
    success_url = _pay(url)
    html = _return(client, success_url)
    assert "Waiting for the payment confirmation" in html
    assert 'hx-trigger="every 2s"' in html
    assert _credits(purchase) == 0
    assert _balance(personas) == 0

    delivered = stripe_env.control("POST", "deliver-pending").json()
    assert delivered["statuses"] == [200]
    fragment = client.get(f"{BILLING}purchases/{purchase.public_id}/", HTTP_HX_REQUEST="true")
    assert "Payment received" in fragment.content.decode()
    assert "every 2s" not in fragment.content.decode()  # polling stops
    assert _credits(purchase) == 1


@needs_postgres
def test_same_webhook_delivered_concurrently_credits_once(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    stripe_env.control("POST", "config", json={"auto_deliver": False})
    purchase, url = _start(client)
    _pay(url)
    event = _event(stripe_env, "checkout.session.completed")
    payload = json.dumps(event)
    threads = 8
    barrier = threading.Barrier(threads)
    statuses: list[int] = []

    def deliver() -> None:
        try:
            barrier.wait(timeout=30)
            statuses.append(_post_webhook(payload, sign(payload, WEBHOOK_SECRET)).status_code)
        finally:
            connection.close()

    workers = [threading.Thread(target=deliver) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert statuses == [200] * threads
    assert _credits(purchase) == 1
    assert _balance(personas) == usd(25)
    assert selectors.wallet_audit_problems() == []


# --- webhook security and bad input ---------------------------------------------------------
def test_forged_stale_and_malformed_webhooks_get_400_and_change_nothing(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    stripe_env.control("POST", "config", json={"auto_deliver": False})
    purchase, url = _start(client)
    _pay(url)
    payload = json.dumps(_event(stripe_env, "checkout.session.completed"))
    ledger_before = LedgerEntry.objects.count()

    stale = int(time.time()) - 301
    for signature in (
        None,
        "",
        "garbage",
        sign(payload, "whsec_not_ours"),  # forged: wrong secret
        sign(payload, WEBHOOK_SECRET, timestamp=stale),  # replayed outside the 300 s window
        sign(payload + " ", WEBHOOK_SECRET).replace("v1=", "v0="),
    ):
        response = _post_webhook(payload, signature)
        assert response.status_code == 400, signature
        assert response.json()["error"]["code"] == "invalid_webhook"
    # A valid signature over a tampered body is still a forgery.
    tampered = payload.replace('"amount_total": 2500', '"amount_total": 250000')
    assert _post_webhook(tampered, sign(payload, WEBHOOK_SECRET)).status_code == 400
    for body in ("{not json", "[]", json.dumps({"object": "event"})):
        assert _post_webhook(body, sign(body, WEBHOOK_SECRET)).status_code == 400, body

    assert LedgerEntry.objects.count() == ledger_before
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.PENDING

    # The genuine delivery still works afterwards.
    assert _post_webhook(payload, sign(payload, WEBHOOK_SECRET)).status_code == 200
    assert _credits(purchase) == 1


def _crafted(event_type: str, obj: dict[str, Any]) -> str:
    return json.dumps(
        {"id": "evt_crafted", "object": "event", "type": event_type, "data": {"object": obj}}
    )


def test_unknown_payment_is_acknowledged_and_ignored(
    personas: Personas, stripe_env: StripeServer
) -> None:
    payload = _crafted(
        "checkout.session.completed",
        {
            "id": "cs_test_elsewhere",
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "client_reference_id": "pur_not_ours",
            "payment_intent": "pi_test_elsewhere",
            "amount_total": 500,
            "currency": "usd",
        },
    )
    response = _post_webhook(payload, sign(payload, WEBHOOK_SECRET))
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored_unknown"
    refund = _crafted(
        "charge.refunded",
        {
            "id": "ch_x",
            "object": "charge",
            "payment_intent": "pi_test_unknown",
            "amount_refunded": 5,
        },
    )
    assert (
        _post_webhook(refund, sign(refund, WEBHOOK_SECRET)).json()["outcome"] == "ignored_unknown"
    )
    assert not LedgerEntry.objects.exists()


def test_amount_mismatch_is_not_credited(personas: Personas, stripe_env: StripeServer) -> None:
    purchase, _url = _start(personas.client(personas.owner))
    payload = _crafted(
        "checkout.session.completed",
        {
            "id": purchase.stripe_checkout_session_id,
            "mode": "payment",
            "payment_status": "paid",
            "client_reference_id": purchase.public_id,
            "payment_intent": "pi_test_cheap",
            "amount_total": 100,  # paid $1 for $25 of credit
            "currency": "usd",
        },
    )
    response = _post_webhook(payload, sign(payload, WEBHOOK_SECRET))
    assert (response.status_code, response.json()["outcome"]) == (200, "rejected")
    assert _credits(purchase) == 0


def test_malformed_event_object_is_400(personas: Personas, stripe_env: StripeServer) -> None:
    payload = _crafted(
        "checkout.session.completed",
        {"mode": "payment", "payment_status": "paid", "client_reference_id": "pur_x"},
    )
    assert _post_webhook(payload, sign(payload, WEBHOOK_SECRET)).status_code == 400
    assert Client().get("/webhooks/stripe/").status_code == 405


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"amount": "custom", "custom_usd": "-5"}, "custom_usd", "between $5 and $10,000"),
        ({"amount": "custom", "custom_usd": "0"}, "custom_usd", "between $5 and $10,000"),
        ({"amount": "custom", "custom_usd": "4.99"}, "custom_usd", "between $5 and $10,000"),
        ({"amount": "custom", "custom_usd": "10000.01"}, "custom_usd", "between $5 and $10,000"),
        ({"amount": "custom", "custom_usd": "99999999999999"}, "custom_usd", "digits"),
        ({"amount": "custom", "custom_usd": "abc"}, "custom_usd", "Enter a number"),
        ({"amount": "custom", "custom_usd": "NaN"}, "custom_usd", "Enter a number"),
        ({"amount": "custom", "custom_usd": "10.001"}, "custom_usd", "decimal places"),
        ({"amount": "custom", "custom_usd": ""}, "custom_usd", "Enter the amount"),
        ({"amount": "7"}, "amount", "valid choice"),
        ({"amount": "25", "currency": "eur"}, "currency", "USD only"),
    ],
)
def test_bad_amounts_are_form_errors_and_create_nothing(
    personas: Personas,
    stripe_env: StripeServer,
    data: dict[str, str],
    field: str,
    message: str,
) -> None:
    calls_before = len(stripe_env.sandbox.requests)
    response = personas.client(personas.owner).post(BILLING, {"currency": "usd", **data})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert message in " ".join(errors[field]), errors
    assert not CreditPurchase.objects.exists()
    assert not LedgerEntry.objects.exists()
    assert len(stripe_env.sandbox.requests) == calls_before  # Stripe never called


def test_service_refuses_bad_amounts_and_currency(
    personas: Personas, stripe_env: StripeServer
) -> None:
    from llmwise.errors import ApplicationError

    urls = services.CheckoutUrls(success_url="http://x/s", cancel_url="http://x/c")
    for amount, currency in (
        (usd(25), "eur"),
        (-usd(25), "usd"),
        (usd(5) + 1, "usd"),
        (usd(10_001), "usd"),
    ):
        with pytest.raises(ApplicationError):
            services.purchase_checkout_start(
                org=personas.org,
                actor=personas.owner,
                amount_micros=amount,
                currency=currency,
                urls=urls,
            )
    assert not CreditPurchase.objects.exists()


# --- refunds, disputes, expiry and ordering -------------------------------------------------
def _paid_purchase(personas: Personas) -> CreditPurchase:
    client = personas.client(personas.owner)
    purchase, url = _start(client)
    _return(client, _pay(url))
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.PAID
    return purchase


def _stripe() -> stripe.StripeClient:
    from apps.wallet.stripe_gateway import stripe_client

    return stripe_client()


def test_refunds_take_credit_back_without_going_negative(
    personas: Personas, stripe_env: StripeServer
) -> None:
    purchase = _paid_purchase(personas)
    wallet = Wallet.objects.get(organization=personas.org)
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(5), request_id="spent", expires_in=timedelta(minutes=1)
    )
    services.reservation_settle(reservation=res, actual_micros=usd(5))  # $20 left

    _stripe().v1.refunds.create(
        params={"payment_intent": purchase.stripe_payment_intent_id, "amount": 1000}
    )
    purchase.refresh_from_db()
    assert purchase.refunded_micros == usd(10)
    assert purchase.status == CreditPurchase.Status.PAID
    assert _balance(personas) == usd(10)

    # Refund the rest ($15) although only $10 is left: take $10, record $5 unrecovered.
    _stripe().v1.refunds.create(params={"payment_intent": purchase.stripe_payment_intent_id})
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.REFUNDED
    assert (purchase.refunded_micros, purchase.unrecovered_micros) == (usd(25), usd(5))
    assert _balance(personas) == 0
    refunds = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).order_by("pk")
    assert [e.amount_micros for e in refunds] == [-usd(10), -usd(10)]

    # Replays of both refund events change nothing.
    for event in [e for e in stripe_env.sandbox.events.values() if e["type"] == "charge.refunded"]:
        stripe_env.control("POST", f"events/{event['id']}/deliver?times=2")
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).count() == 2
    assert _balance(personas) == 0
    assert selectors.wallet_audit_problems() == []


def test_dispute_creates_a_negative_adjustment_once(
    personas: Personas, stripe_env: StripeServer
) -> None:
    purchase = _paid_purchase(personas)
    charge_id = stripe_env.sandbox.payment_intents[purchase.stripe_payment_intent_id][
        "latest_charge"
    ]
    event_id = stripe_env.control("POST", f"charges/{charge_id}/dispute").json()["event"]
    stripe_env.control("POST", f"events/{event_id}/deliver?times=2")
    entries = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT, purchase=purchase)
    assert [e.amount_micros for e in entries] == [-usd(25)]
    assert _balance(personas) == 0
    purchase.refresh_from_db()
    assert purchase.disputed_micros == usd(25)
    assert AuditEvent.objects.filter(action="purchase.dispute").count() == 1
    assert selectors.wallet_audit_problems() == []


def test_refund_event_overtaking_the_payment_event(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    stripe_env.control("POST", "config", json={"auto_deliver": False})
    purchase, url = _start(client)
    _pay(url)
    session = stripe_env.sandbox.sessions[purchase.stripe_checkout_session_id]
    _stripe().v1.refunds.create(params={"payment_intent": session["payment_intent"]})
    stripe_env.sandbox.pending.reverse()  # charge.refunded first, then checkout.session.completed
    assert stripe_env.control("POST", "deliver-pending").json()["statuses"] == [200, 200]
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.REFUNDED
    kinds = list(LedgerEntry.objects.order_by("pk").values_list("kind", "amount_micros"))
    assert kinds == [("purchase", usd(25)), ("refund", -usd(25))]
    assert _balance(personas) == 0
    assert selectors.wallet_audit_problems() == []


def test_expired_checkout_marks_the_purchase_failed(
    personas: Personas, stripe_env: StripeServer
) -> None:
    purchase, _url = _start(personas.client(personas.owner))
    _stripe().v1.checkout.sessions.expire(purchase.stripe_checkout_session_id)
    purchase.refresh_from_db()
    assert purchase.status == CreditPurchase.Status.FAILED
    assert not LedgerEntry.objects.exists()


def test_cancel_returns_to_billing_with_a_message(
    personas: Personas, stripe_env: StripeServer
) -> None:
    client = personas.client(personas.owner)
    _purchase, url = _start(client)
    page = httpx.get(url, timeout=30).text
    cancel = re.search(r'<a href="([^"]+)">Cancel and return', page)
    assert cancel is not None
    parts = urlsplit(cancel.group(1).replace("&amp;", "&"))
    response = client.get(f"{parts.path}?{parts.query}")
    assert "Checkout canceled; nothing was charged." in response.content.decode()


def test_stripe_unreachable_fails_cleanly(
    personas: Personas, stripe_env: StripeServer, settings: Any
) -> None:
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    client = personas.client(personas.owner)
    response = client.post(BILLING, {"amount": "25", "currency": "usd"}, follow=True)
    assert response.status_code == 200
    assert "payment provider is unavailable" in response.content.decode()
    purchase = CreditPurchase.objects.get()
    assert purchase.status == CreditPurchase.Status.FAILED
    assert not LedgerEntry.objects.exists()


def test_stripe_io_is_refused_inside_a_transaction(
    personas: Personas, stripe_env: StripeServer
) -> None:
    urls = services.CheckoutUrls(success_url="http://x/s", cancel_url="http://x/c")
    calls_before = len(stripe_env.sandbox.requests)
    with pytest.raises(RuntimeError, match="inside a database transaction"), transaction.atomic():
        services.purchase_checkout_start(
            org=personas.org, actor=personas.owner, amount_micros=usd(25), currency="usd", urls=urls
        )
    assert len(stripe_env.sandbox.requests) == calls_before
    assert not CreditPurchase.objects.exists()


def test_fake_stripe_requires_a_test_key(stripe_env: StripeServer, settings: Any) -> None:
    response = httpx.post(
        f"{stripe_env.api_base}/v1/checkout/sessions",
        headers={"Authorization": "Bearer sk_live_nope"},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    settings.STRIPE_SECRET_KEY = SECRET_KEY
