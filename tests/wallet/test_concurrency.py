"""Many simultaneous reserves and settles against one wallet, each thread with its own database
connection, on PostgreSQL: nothing is overspent, the ledger balances. Every test runs on both
money paths: the ORM services and the gateway's one-statement hot path (apps.wallet.hotpath)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from apps.wallet import hotpath, selectors, services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from apps.wallet.services import InsufficientCredit
from tests.conftest import Personas
from tests.wallet.conftest import many_connections, needs_postgres, simultaneously, usd

pytestmark = [needs_postgres, many_connections, pytest.mark.django_db(transaction=True)]

# 40 writers at once (13 can afford a hold): room in PostgreSQL's 100 for the other test worker.
THREADS = 40
HOLD_FOR = timedelta(minutes=1)


class MoneyPath:
    """reserve(wallet, amount, request_id) and settle(reservation, actual) of one implementation."""

    def __init__(self, name: str) -> None:
        self.name = name

    def reserve(self, wallet: Wallet, amount: int, request_id: str) -> Reservation:
        if self.name == "hotpath":
            return hotpath.reserve(
                org=wallet.organization,
                amount_micros=amount,
                request_id=request_id,
                expires_in=HOLD_FOR,
            )
        return services.wallet_reserve(
            wallet=wallet, amount_micros=amount, request_id=request_id, expires_in=HOLD_FOR
        )

    def settle(self, reservation: Reservation, actual: int) -> Reservation:
        if self.name == "hotpath":
            return hotpath.settle(reservation=reservation, actual_micros=actual)
        return services.reservation_settle(reservation=reservation, actual_micros=actual)


@pytest.fixture(params=["services", "hotpath"])
def money(request: pytest.FixtureRequest) -> MoneyPath:
    return MoneyPath(request.param)


def test_concurrent_reservations_only_the_affordable_ones_succeed(
    personas: Personas, fund: Callable[..., Wallet], money: MoneyPath
) -> None:
    wallet = fund(personas.org, 10)  # affords exactly 13 holds of $0.75 ($9.75)
    hold = 750_000

    def reserve(i: int) -> Reservation:
        return money.reserve(wallet, hold, f"req-{i}")

    results = simultaneously(THREADS, reserve)
    won = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, InsufficientCredit)]
    assert len(won) == usd(10) // hold == 13
    assert len(refused) == THREADS - 13, [r for r in results if not isinstance(r, Reservation)]
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 13 * hold
    assert wallet.available_micros == usd(10) - 13 * hold >= 0
    assert Reservation.objects.filter(status=Reservation.Status.HELD).count() == 13
    assert selectors.wallet_audit_problems() == []


def test_concurrent_reserve_and_settle_mixed_never_overspend(
    personas: Personas, fund: Callable[..., Wallet], money: MoneyPath
) -> None:
    wallet = fund(personas.org, 5)

    def call(i: int) -> int:
        # Uneven holds; actual cost sometimes above the hold (the gateway's estimate was low).
        amount = 200_000 + (i % 7) * 50_000
        res = money.reserve(wallet, amount, f"mix-{i}")
        actual = amount * 2 if i % 5 == 0 else amount // 2
        return money.settle(res, actual).settled_micros

    results = simultaneously(THREADS, call)
    unexpected = [
        r for r in results if isinstance(r, Exception) and not isinstance(r, InsufficientCredit)
    ]
    assert unexpected == []
    charged = sum(r for r in results if isinstance(r, int))
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 0
    assert wallet.balance_micros == usd(5) - charged >= 0
    assert wallet.spent_micros == charged
    assert (
        -sum(
            LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).values_list(
                "amount_micros", flat=True
            )
        )
        == charged
    )
    assert selectors.wallet_audit_problems() == []


def test_concurrent_reserves_with_one_request_id_hold_once(
    personas: Personas, fund: Callable[..., Wallet], money: MoneyPath
) -> None:
    wallet = fund(personas.org, 10)

    def reserve(_: int) -> int:
        return money.reserve(wallet, usd(1), "dup").pk

    results = simultaneously(20, reserve)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    wallet.refresh_from_db()
    assert wallet.reserved_micros == usd(1)
    assert selectors.wallet_audit_problems() == []
