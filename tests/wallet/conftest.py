"""Wallet fixtures: wallets with credit, and a real fake-Stripe server (see stripe_server)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection

from apps.accounts.models import Organization
from apps.wallet import services
from apps.wallet.models import MICROS_PER_USD, Wallet
from tests.conftest import Personas

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="row locks and truly concurrent writers need PostgreSQL (SQLite serializes writers)",
)


def usd(amount: float | int) -> int:
    """Micro-USD for a literal dollar amount in a test (exact for the values we use)."""
    return round(amount * MICROS_PER_USD)


@pytest.fixture
def fund() -> Callable[[Organization, float], Wallet]:
    """Give an organization's wallet credit through the real service (an adjustment)."""

    def fund(org: Organization, amount_usd: float) -> Wallet:
        wallet = services.wallet_for_org(org=org)
        services.wallet_grant(wallet=wallet, amount_micros=usd(amount_usd), note="test funds")
        wallet.refresh_from_db()
        return wallet

    return fund


@pytest.fixture
def wallet(personas: Personas, fund: Callable[[Organization, float], Wallet]) -> Wallet:
    """Acme's wallet with $10.00."""
    return fund(personas.org, 10)


from tests.wallet.stripe_server import stripe_env, stripe_server  # noqa: E402, F401
