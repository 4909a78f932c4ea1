"""Wallet fixtures: wallets with credit, and a real fake-Stripe server (see stripe_server)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
# Tests that open dozens of connections at once (simultaneously()) share one xdist worker, so
# two of them never run together and exceed PostgreSQL's max_connections.
many_connections = pytest.mark.xdist_group("postgres_connections")


T = TypeVar("T")


def simultaneously(count: int, work: Callable[[int], T]) -> list[T | Exception]:
    """Run ``work(i)`` in ``count`` threads released together by a barrier, each thread with
    its own database connection (closed when it is done); exceptions are returned, not raised."""
    barrier = threading.Barrier(count)

    def run(i: int) -> T | Exception:
        try:
            barrier.wait(timeout=30)
            return work(i)
        except Exception as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


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
