"""All Stripe I/O, in one place, through the official stripe-python client.

The client is pointed at ``settings.STRIPE_API_BASE`` when it is set (the fake server of
:mod:`apps.wallet.stripe_sandbox` in the embedded default and in tests), at Stripe otherwise. It is
never patched. Every call refuses to run inside a database transaction: a slow payment provider
must never hold a lock.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction

from .models import MICROS_PER_CENT, CreditPurchase

WEBHOOK_TOLERANCE_SECONDS = 300
STRIPE_TIMEOUT_SECONDS = 20
STRIPE_NETWORK_RETRIES = 2


class StripeUnavailable(Exception):
    """Stripe could not be reached, or refused our request."""


class WebhookRejected(Exception):
    """The webhook is not from Stripe (bad or stale signature) or is not an event."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@functools.lru_cache(maxsize=4)
def _client(api_key: str, api_base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=STRIPE_NETWORK_RETRIES,
        http_client=stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_SECONDS, allow_sync_methods=True),
    )


def stripe_client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise StripeUnavailable("Payments are not configured (STRIPE_SECRET_KEY is empty).")
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _assert_outside_transaction() -> None:
    # Test cases wrap each test in a transaction of their own; only ours count.
    connection = transaction.get_connection()
    if any(not block._from_testcase for block in connection.atomic_blocks):
        raise RuntimeError("Stripe I/O must not happen inside a database transaction.")


def checkout_session_create(
    *,
    purchase: CreditPurchase,
    success_url: str,
    cancel_url: str,
    customer_email: str | None,
) -> CheckoutSession:
    """A hosted Checkout Session for ``purchase``; idempotent per purchase."""
    _assert_outside_transaction()
    metadata = {"purchase_id": purchase.public_id, "organization_id": str(purchase.organization_id)}
    params: dict[str, Any] = {
        "mode": "payment",
        "submit_type": "pay",
        "client_reference_id": purchase.public_id,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": purchase.currency,
                    "unit_amount": purchase.amount_micros // MICROS_PER_CENT,
                    "product_data": {
                        "name": "LLMWise credit",
                        "description": f"{purchase.amount_usd[:-4]} USD of prepaid API credit",
                    },
                },
            }
        ],
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if customer_email:
        params["customer_email"] = customer_email
    try:
        session = stripe_client().v1.checkout.sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"llmwise-checkout-{purchase.public_id}"},
        )
    except stripe.StripeError as exc:
        raise StripeUnavailable(str(exc.user_message or exc)) from exc
    if not session.id or not session.url:
        raise StripeUnavailable("Stripe returned a session without an id or url.")
    return CheckoutSession(id=session.id, url=session.url)


def checkout_sessions_for_payment_intent(payment_intent_id: str) -> list[dict[str, Any]]:
    """The Checkout Sessions that produced a payment (to resolve out-of-order events)."""
    _assert_outside_transaction()
    try:
        found = stripe_client().v1.checkout.sessions.list(
            params={"payment_intent": payment_intent_id, "limit": 3}
        )
    except stripe.StripeError as exc:
        raise StripeUnavailable(str(exc.user_message or exc)) from exc
    return [session.to_dict() for session in found.data]


def event_verify(*, payload: bytes, signature: str) -> dict[str, Any]:
    """The event in a webhook body, after checking Stripe's signature and its age."""
    try:
        stripe.Webhook.construct_event(
            payload, signature, settings.STRIPE_WEBHOOK_SECRET, WEBHOOK_TOLERANCE_SECONDS
        )
        # construct_event already parsed it; plain dicts are simpler to handle from here on.
        event = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Bad Stripe signature: {exc.user_message or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected("The body is not valid JSON.") from exc
    except (AttributeError, TypeError) as exc:  # valid JSON, but not an object
        raise WebhookRejected("The body is not a Stripe event.") from exc
    if not isinstance(event, dict) or event.get("object") != "event" or "type" not in event:
        raise WebhookRejected("The body is not a Stripe event.")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookRejected("The event has no data object.")
    return event
