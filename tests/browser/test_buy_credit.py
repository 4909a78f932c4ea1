"""Buying credit in a real browser: billing page → Stripe's hosted checkout (the fake, over real
HTTP) → back to LLMWise, where the balance has risen by exactly the amount paid."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from apps.accounts import services as account_services
from apps.wallet.models import CreditPurchase, LedgerEntry, Wallet
from tests.factories import PASSWORD, UserFactory
from tests.wallet.stripe_server import StripeServer, stripe_env, stripe_server  # noqa: F401

pytestmark = pytest.mark.browser


def _log_in(page: Page, base_url: str, email: str) -> None:
    page.goto(base_url + "/accounts/login/")
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    main.get_by_role("button", name="Sign In").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))


def test_owner_buys_credit_and_sees_the_balance_rise(
    stripe_env: StripeServer,  # noqa: F811 - the fixture imported above
    page: Page,
) -> None:
    owner = UserFactory(email="buyer@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    base_url = stripe_env.url

    _log_in(page, base_url, owner.email)
    page.get_by_role("link", name="Billing").click()
    available = page.locator("#balance-available")
    expect(available).to_have_attribute("data-micros", "0")

    page.get_by_label("$25").check()
    page.get_by_role("button", name="Continue to payment").click()

    # The hosted checkout page of the (fake) Stripe, on its own path, like checkout.stripe.com.
    expect(page).to_have_url(re.compile(r"/_sandbox/stripe/"))
    page.get_by_role("button", name="Pay with test card").click()

    # Back on LLMWise: the purchase page shows the credited balance (the webhook may arrive
    # before or after the browser; the page polls until it has).
    expect(page.get_by_text("Payment received.")).to_be_visible()
    expect(page.locator("#balance-available")).to_have_attribute("data-micros", "25000000")

    page.get_by_role("link", name="← Billing").click()
    expect(page.locator("#balance-available")).to_have_text(re.compile(r"\$25\.00"))

    purchase = CreditPurchase.objects.get(organization=org)
    assert purchase.status == CreditPurchase.Status.PAID
    assert LedgerEntry.objects.filter(purchase=purchase, kind="purchase").count() == 1
    assert Wallet.objects.get(organization=org).balance_micros == 25_000_000
