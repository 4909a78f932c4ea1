"""The gateway's one-round-trip reserve and settle (apps.wallet.hotpath) keep every rule of the
ORM services: on PostgreSQL they run the SQL functions of migration wallet.0002, so each rule is
checked here against them, and the same random workload applied through both paths must leave
identical wallets, reservations and ledgers. Concurrency on both paths: test_concurrency.py."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection

from apps.accounts.models import Organization
from apps.wallet import hotpath, selectors, services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from apps.wallet.services import InsufficientCredit
from llmwise.errors import ApplicationError
from tests.conftest import Personas
from tests.wallet.conftest import needs_postgres, usd

MINUTE = timedelta(minutes=1)


def _reserve(wallet: Wallet, amount: int, request_id: str, expires_in: timedelta = MINUTE):  # type: ignore[no-untyped-def]
    return hotpath.reserve(
        org=wallet.organization, amount_micros=amount, request_id=request_id, expires_in=expires_in
    )


def _reload(wallet: Wallet) -> Wallet:
    wallet.refresh_from_db()
    return wallet


def _audit_ok() -> None:
    assert selectors.wallet_audit_problems() == []


@pytest.mark.django_db
def test_uses_the_sql_functions_on_postgresql(wallet: Wallet) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the SQL functions exist on PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'llmwise_%%' ORDER BY proname"
        )
        names = [row[0] for row in cursor.fetchall()]
    assert names == ["llmwise_reservation_settle", "llmwise_wallet_reserve"]
    from django.test.utils import CaptureQueriesContext

    assert wallet.organization is not None  # loaded before counting
    with CaptureQueriesContext(connection) as queries:
        res = _reserve(wallet, usd(1), "one-trip")
        hotpath.settle(reservation=res, actual_micros=300_000)
    # One statement each (plus the savepoint pair of the test's transaction around settle).
    statements = [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements


@pytest.mark.django_db
def test_reserve_then_settle_charges_actual_cost_and_frees_the_rest(wallet: Wallet) -> None:
    res = _reserve(wallet, usd(2), "req-1")
    assert res.status == Reservation.Status.HELD
    assert Reservation.objects.get(pk=res.pk).amount_micros == usd(2)
    wallet = _reload(wallet)
    assert (wallet.available_micros, wallet.reserved_micros) == (usd(8), usd(2))

    settled = hotpath.settle(reservation=res, actual_micros=1_500_000, usage={"prompt_tokens": 10})
    assert settled.status == Reservation.Status.SETTLED
    assert (settled.settled_micros, settled.shortfall_micros) == (1_500_000, 0)
    stored = Reservation.objects.get(pk=res.pk)
    assert (stored.status, stored.settled_micros, stored.usage) == (
        Reservation.Status.SETTLED,
        1_500_000,
        {"prompt_tokens": 10},
    )
    assert stored.finished_at is not None
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros, wallet.spent_micros) == (
        8_500_000,
        0,
        1_500_000,
    )
    charge = LedgerEntry.objects.get(kind=LedgerEntry.Kind.CHARGE)
    assert (charge.amount_micros, charge.request_id, charge.balance_after_micros) == (
        -1_500_000,
        "req-1",
        8_500_000,
    )
    _audit_ok()


@pytest.mark.django_db
def test_reserve_is_idempotent_and_refuses_short_credit(wallet: Wallet) -> None:
    a = _reserve(wallet, usd(3), "same")
    b = _reserve(wallet, usd(3), "same")
    assert a.pk == b.pk
    assert _reload(wallet).reserved_micros == usd(3)
    with pytest.raises(InsufficientCredit):
        _reserve(wallet, usd(7) + 1, "too-much")
    assert not Reservation.objects.filter(request_id="too-much").exists()
    _reserve(wallet, usd(7), "exactly-the-rest")
    assert _reload(wallet).available_micros == 0
    _audit_ok()


@pytest.mark.django_db
def test_reserve_on_an_org_without_a_wallet_creates_it_and_refuses(personas: Personas) -> None:
    with pytest.raises(InsufficientCredit):
        hotpath.reserve(org=personas.other_org, amount_micros=1, request_id="x", expires_in=MINUTE)
    assert Wallet.objects.filter(organization=personas.other_org).count() == 1


@pytest.mark.django_db
def test_settle_twice_and_after_release_have_no_effect(wallet: Wallet) -> None:
    res = _reserve(wallet, usd(1), "r")
    hotpath.settle(reservation=res, actual_micros=400_000)
    again = hotpath.settle(reservation=res, actual_micros=900_000)
    assert (again.status, again.settled_micros) == (Reservation.Status.SETTLED, 400_000)
    other = _reserve(wallet, usd(1), "r2")
    services.reservation_release(reservation=other)
    after = hotpath.settle(reservation=other, actual_micros=usd(1))  # the call never happened
    assert after.status == Reservation.Status.RELEASED
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (usd(10) - 400_000, 0)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 1
    _audit_ok()


@pytest.mark.django_db
def test_settle_above_what_is_left_records_shortfall_never_negative(wallet: Wallet) -> None:
    a = _reserve(wallet, usd(4), "a")
    b = _reserve(wallet, usd(5), "b")
    settled = hotpath.settle(reservation=a, actual_micros=usd(8))
    assert (settled.settled_micros, settled.shortfall_micros) == (usd(5), usd(3))
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (usd(5), usd(5))
    hotpath.settle(reservation=b, actual_micros=usd(5))
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros, wallet.spent_micros) == (0, 0, usd(10))
    _audit_ok()


@pytest.mark.django_db
def test_late_settle_of_an_expired_reservation_still_charges(wallet: Wallet) -> None:
    res = _reserve(wallet, usd(2), "slow", timedelta(seconds=1))
    Reservation.objects.filter(pk=res.pk).update(expires_at=res.created_at - MINUTE)
    assert services.reservations_release_expired() == 1
    settled = hotpath.settle(reservation=res, actual_micros=usd(1))
    assert settled.status == Reservation.Status.SETTLED
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (usd(9), 0)
    _audit_ok()


@pytest.mark.django_db
def test_zero_cost_writes_no_charge_and_bad_cost_is_refused(wallet: Wallet) -> None:
    res = _reserve(wallet, usd(1), "z")
    with pytest.raises(ApplicationError):
        hotpath.settle(reservation=res, actual_micros=-5)
    assert Reservation.objects.get(pk=res.pk).status == Reservation.Status.HELD
    hotpath.settle(reservation=res, actual_micros=0)
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).exists()
    assert _reload(wallet).available_micros == usd(10)
    _audit_ok()


@pytest.mark.django_db
def test_low_balance_alert_fires_once_and_rearms(
    personas: Personas,
    fund: Callable[[Organization, float], Wallet],
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    wallet = fund(personas.org, 10)
    services.wallet_set_low_balance_alert(
        org=personas.org, actor=personas.admin, threshold_micros=usd(5)
    )

    def spend(request_id: str, amount: int) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            res = _reserve(wallet, amount, request_id)
            hotpath.settle(reservation=res, actual_micros=amount)

    spend("a", usd(4))
    assert mail.outbox == []
    spend("b", usd(2))
    assert len(mail.outbox) == 1
    assert "$4.000000" in mail.outbox[0].body
    spend("c", usd(1))
    assert len(mail.outbox) == 1
    services.wallet_grant(wallet=wallet, amount_micros=usd(10), note="top-up")
    spend("d", usd(9))
    assert len(mail.outbox) == 2
    assert _reload(wallet).low_balance_alerted is True
    _audit_ok()


@pytest.mark.django_db
def test_same_workload_leaves_the_same_books_as_the_orm_services(
    personas: Personas, fund: Callable[[Organization, float], Wallet]
) -> None:
    """A random mix of holds, settles (some above the hold, some after expiry) and releases,
    applied to one wallet through the hot path and to another through the ORM services."""
    fast = fund(personas.org, 3)
    slow = fund(personas.other_org, 3)
    rng = random.Random(20261126)
    steps = []
    for i in range(60):
        steps.append(
            (f"w-{i}", rng.randint(1, 400_000), rng.choice([0, 0.5, 1, 1.7]), rng.random())
        )

    def run(
        wallet: Wallet, reserve: Callable[..., Reservation], settle: Callable[..., object]
    ) -> None:
        for request_id, hold, factor, fate in steps:
            try:
                res = reserve(wallet, hold, request_id)
            except InsufficientCredit:
                continue
            if fate < 0.15:
                services.reservation_release(reservation=res)
            else:
                settle(reservation=res, actual_micros=int(hold * factor))

    run(fast, _reserve, hotpath.settle)
    run(
        slow,
        lambda w, amount, rid: services.wallet_reserve(
            wallet=w, amount_micros=amount, request_id=rid, expires_in=MINUTE
        ),
        services.reservation_settle,
    )

    def books(wallet: Wallet) -> tuple[object, ...]:
        wallet.refresh_from_db()
        reservations = list(
            Reservation.objects.filter(wallet=wallet)
            .order_by("request_id")
            .values_list(
                "request_id", "amount_micros", "status", "settled_micros", "shortfall_micros"
            )
        )
        ledger = list(
            LedgerEntry.objects.filter(wallet=wallet, kind=LedgerEntry.Kind.CHARGE)
            .order_by("pk")
            .values_list("request_id", "amount_micros", "balance_after_micros")
        )
        return (
            wallet.balance_micros,
            wallet.reserved_micros,
            wallet.spent_micros,
            reservations,
            ledger,
        )

    assert books(fast) == books(slow)
    assert books(fast)[2] > 0  # the workload did spend
    _audit_ok()


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_event_loop_reserve_holds_at_once_and_leaves_later_commits_durable(
    wallet: Wallet,
) -> None:
    """The event loop's reserve commits without waiting for its WAL flush, for its own
    transaction only: the hold is there for every other session at once, and the next
    statement on the same pooled connection (the settle, in a call) is back to waiting for its
    flush."""
    import asyncio

    import psycopg

    from llmwise import adb

    async def reserve_then_look() -> tuple[Reservation | None, str]:
        conn = await psycopg.AsyncConnection.connect(**adb._connect_kwargs())
        try:
            held = await hotpath.areserve(
                conn,
                org_id=wallet.organization_id,
                amount_micros=usd(2),
                request_id="loop-hold",
                expires_in=MINUTE,
            )
            after = await (await conn.execute("SHOW synchronous_commit")).fetchone()
            assert after is not None
            return held, after[0]
        finally:
            await conn.close()

    held, after = asyncio.run(reserve_then_look())
    assert held is not None
    assert held.status == Reservation.Status.HELD
    assert after == "on"
    # Another session (this test's) sees the hold and the wallet it reduced.
    stored = Reservation.objects.get(request_id="loop-hold")
    assert (stored.pk, stored.amount_micros) == (held.pk, usd(2))
    assert _reload(wallet).reserved_micros == usd(2)
    hotpath.settle(reservation=stored, actual_micros=usd(1))
    wallet = _reload(wallet)
    assert (wallet.reserved_micros, wallet.available_micros) == (0, usd(9))
    _audit_ok()


@needs_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_event_loop_pool_prepares_its_statements_unless_switched_off(
    settings: Any, prepared: bool
) -> None:
    """The pool's connections prepare a statement on the server from its second run (planned
    once per connection); ``GATEWAY_DB_PREPARED_STATEMENTS = False`` (behind a pooler that
    cannot keep them) prepares nothing."""
    import asyncio

    from llmwise import adb

    settings.GATEWAY_DB_PREPARED_STATEMENTS = prepared
    statement = "SELECT count(*) FROM wallet_wallet WHERE id > %s"

    async def run_twice_then_list() -> list[str]:
        await adb.start()
        try:

            async def twice_then_list(conn: Any) -> list[str]:
                for _ in range(2):
                    await conn.execute(statement, [0])
                cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
                return [row[0] for row in await cursor.fetchall()]

            listed: list[str] = await adb.run(twice_then_list)
            return listed
        finally:
            await adb.stop()

    listed = asyncio.run(run_twice_then_list())
    assert any("wallet_wallet" in text for text in listed) is prepared
