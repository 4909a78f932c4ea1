"""Reserve → settle/release, grants and the ledger, through the real services and database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command

from apps.accounts.models import Organization
from apps.wallet import selectors, services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from apps.wallet.services import InsufficientCredit
from llmwise.errors import ApplicationError, Conflict
from tests.conftest import Personas
from tests.wallet.conftest import usd

pytestmark = pytest.mark.django_db

MINUTE = timedelta(minutes=1)


def _reload(wallet: Wallet) -> Wallet:
    wallet.refresh_from_db()
    return wallet


def _audit_ok() -> None:
    assert selectors.wallet_audit_problems() == []


def test_wallet_is_created_lazily_once(personas: Personas) -> None:
    first = services.wallet_for_org(org=personas.org)
    second = services.wallet_for_org(org=personas.org)
    assert first.pk == second.pk
    assert (first.balance_micros, first.reserved_micros) == (0, 0)
    assert Wallet.objects.filter(organization=personas.org).count() == 1


def test_reserve_then_settle_charges_actual_cost_and_frees_the_rest(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(2), request_id="req-1", expires_in=MINUTE
    )
    assert res.status == Reservation.Status.HELD
    wallet = _reload(wallet)
    assert (wallet.available_micros, wallet.reserved_micros) == (usd(8), usd(2))

    settled = services.reservation_settle(
        reservation=res, actual_micros=1_500_000, usage={"prompt_tokens": 10}
    )
    assert settled.status == Reservation.Status.SETTLED
    assert (settled.settled_micros, settled.shortfall_micros) == (1_500_000, 0)
    assert settled.usage == {"prompt_tokens": 10}
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (8_500_000, 0)
    assert wallet.spent_micros == 1_500_000
    charge = LedgerEntry.objects.get(kind=LedgerEntry.Kind.CHARGE)
    assert (charge.amount_micros, charge.request_id) == (-1_500_000, "req-1")
    assert charge.balance_after_micros == 8_500_000
    _audit_ok()


def test_reserve_is_idempotent_by_request_id(wallet: Wallet) -> None:
    a = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(3), request_id="same", expires_in=MINUTE
    )
    b = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(3), request_id="same", expires_in=MINUTE
    )
    assert a.pk == b.pk
    assert _reload(wallet).reserved_micros == usd(3)
    _audit_ok()


def test_reserve_beyond_available_raises_402_and_changes_nothing(wallet: Wallet) -> None:
    services.wallet_reserve(wallet=wallet, amount_micros=usd(7), request_id="a", expires_in=MINUTE)
    with pytest.raises(InsufficientCredit) as excinfo:
        services.wallet_reserve(
            wallet=wallet, amount_micros=usd(3) + 1, request_id="b", expires_in=MINUTE
        )
    assert excinfo.value.status_code == 402
    assert excinfo.value.code == "insufficient_credit"
    assert _reload(wallet).reserved_micros == usd(7)
    assert not Reservation.objects.filter(request_id="b").exists()
    # Exactly what is left still fits.
    services.wallet_reserve(wallet=wallet, amount_micros=usd(3), request_id="c", expires_in=MINUTE)
    assert _reload(wallet).available_micros == 0
    _audit_ok()


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "100"])
def test_reserve_refuses_bad_amounts(wallet: Wallet, amount: object) -> None:
    with pytest.raises(ApplicationError):
        services.wallet_reserve(
            wallet=wallet,
            amount_micros=amount,  # type: ignore[arg-type]
            request_id="bad",
            expires_in=MINUTE,
        )
    assert not Reservation.objects.exists()
    assert _reload(wallet).reserved_micros == 0


def test_settle_and_release_twice_have_no_second_effect(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="r", expires_in=MINUTE
    )
    services.reservation_settle(reservation=res, actual_micros=400_000)
    services.reservation_settle(reservation=res, actual_micros=900_000)
    services.reservation_release(reservation=res)
    wallet = _reload(wallet)
    assert wallet.balance_micros == usd(10) - 400_000
    assert wallet.reserved_micros == 0
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 1

    other = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="r2", expires_in=MINUTE
    )
    services.reservation_release(reservation=other)
    services.reservation_release(reservation=other)
    services.reservation_settle(reservation=other, actual_micros=usd(1))  # call never happened
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (usd(10) - 400_000, 0)
    assert Reservation.objects.get(pk=other.pk).status == Reservation.Status.RELEASED
    _audit_ok()


def test_settle_above_what_is_left_records_shortfall_never_negative(wallet: Wallet) -> None:
    a = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(4), request_id="a", expires_in=MINUTE
    )
    b = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(5), request_id="b", expires_in=MINUTE
    )
    # A's call cost $8 but only $10 - B's $5 hold = $5 can be charged without touching B's hold.
    settled = services.reservation_settle(reservation=a, actual_micros=usd(8))
    assert (settled.settled_micros, settled.shortfall_micros) == (usd(5), usd(3))
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros, wallet.available_micros) == (
        usd(5),
        usd(5),
        0,
    )
    # B is still fully covered.
    services.reservation_settle(reservation=b, actual_micros=usd(5))
    wallet = _reload(wallet)
    assert (wallet.balance_micros, wallet.reserved_micros) == (0, 0)
    assert wallet.spent_micros == usd(10)
    _audit_ok()


def test_late_settle_of_an_expired_reservation_still_charges(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(2), request_id="slow", expires_in=timedelta(seconds=1)
    )
    Reservation.objects.filter(pk=res.pk).update(expires_at=res.created_at - MINUTE)
    assert services.reservations_release_expired() == 1
    assert _reload(wallet).reserved_micros == 0
    settled = services.reservation_settle(reservation=res, actual_micros=usd(1))
    assert settled.status == Reservation.Status.SETTLED
    assert _reload(wallet).balance_micros == usd(9)
    _audit_ok()


def test_settle_refuses_negative_cost(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="n", expires_in=MINUTE
    )
    with pytest.raises(ApplicationError):
        services.reservation_settle(reservation=res, actual_micros=-5)
    assert Reservation.objects.get(pk=res.pk).status == Reservation.Status.HELD


def test_zero_cost_settle_writes_no_charge(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="z", expires_in=MINUTE
    )
    services.reservation_settle(reservation=res, actual_micros=0)
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).exists()
    assert _reload(wallet).available_micros == usd(10)
    _audit_ok()


def test_ledger_is_append_only(wallet: Wallet) -> None:
    entry = LedgerEntry.objects.get()
    entry.note = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()


def test_grant_negative_adjustment_cannot_exceed_available(wallet: Wallet) -> None:
    services.wallet_reserve(wallet=wallet, amount_micros=usd(6), request_id="h", expires_in=MINUTE)
    with pytest.raises(ApplicationError, match="available"):
        services.wallet_grant(wallet=wallet, amount_micros=-usd(5), note="oops")
    services.wallet_grant(wallet=wallet, amount_micros=-usd(4), note="correction")
    assert _reload(wallet).available_micros == 0
    with pytest.raises(ApplicationError, match="note"):
        services.wallet_grant(wallet=wallet, amount_micros=usd(1), note="  ")
    _audit_ok()


def test_trial_grant_once_per_org(personas: Personas, settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRIAL_CREDIT_MICROS = 2_500_000
    first = services.wallet_grant_trial(org=personas.org)
    assert first is not None
    assert first.amount_micros == 2_500_000
    assert services.wallet_grant_trial(org=personas.org) is None
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TRIAL_GRANT).count() == 1
    assert services.wallet_for_org(org=personas.org).balance_micros == 2_500_000


def test_low_balance_alert_emails_owners_and_admins_once_and_rearms(
    personas: Personas,
    fund: Callable[[Organization, float], Wallet],
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    wallet = fund(personas.org, 10)
    with django_capture_on_commit_callbacks(execute=True):
        services.wallet_set_low_balance_alert(
            org=personas.org, actor=personas.admin, threshold_micros=usd(5)
        )
    assert mail.outbox == []

    def spend(request_id: str, amount: int) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            res = services.wallet_reserve(
                wallet=wallet, amount_micros=amount, request_id=request_id, expires_in=MINUTE
            )
            services.reservation_settle(reservation=res, actual_micros=amount)

    spend("a", usd(4))  # $6 left: above the line
    assert mail.outbox == []
    spend("b", usd(2))  # $4 left: below
    assert len(mail.outbox) == 1
    assert sorted(mail.outbox[0].to) == ["admin@acme.test", "owner@acme.test"]
    assert "$4.000000" in mail.outbox[0].body
    spend("c", usd(1))  # still below: no second email
    assert len(mail.outbox) == 1

    with django_capture_on_commit_callbacks(execute=True):
        services.wallet_grant(wallet=wallet, amount_micros=usd(10), note="top-up")  # $13: re-armed
    spend("d", usd(9))  # $4 again
    assert len(mail.outbox) == 2
    _audit_ok()


def test_members_cannot_set_the_alert(personas: Personas) -> None:
    from llmwise.errors import NotFound, NotPermitted

    with pytest.raises(NotPermitted):
        services.wallet_set_low_balance_alert(
            org=personas.org, actor=personas.member, threshold_micros=usd(1)
        )
    with pytest.raises(NotFound):
        services.wallet_set_low_balance_alert(
            org=personas.org, actor=personas.outsider, threshold_micros=usd(1)
        )


def test_selectors_summary_and_filters(wallet: Wallet, personas: Personas) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(2), request_id="s", expires_in=MINUTE
    )
    services.reservation_settle(reservation=res, actual_micros=usd(1))
    services.wallet_reserve(wallet=wallet, amount_micros=usd(3), request_id="t", expires_in=MINUTE)
    summary = selectors.wallet_summary(org=personas.org)
    assert (summary.available_micros, summary.reserved_micros, summary.spent_micros) == (
        usd(6),
        usd(3),
        usd(1),
    )
    assert summary.usd("available_micros") == "6.000000"
    charges = selectors.ledger_entries_of(org=personas.org, kind=LedgerEntry.Kind.CHARGE)
    assert [e.request_id for e in charges] == ["s"]
    assert not selectors.ledger_entries_of(org=personas.other_org).exists()
    empty = selectors.wallet_summary(org=personas.other_org)
    assert empty.available_micros == 0


def test_wallet_audit_command_passes_then_detects_tampering(wallet: Wallet) -> None:
    call_command("wallet_audit")
    Wallet.objects.filter(pk=wallet.pk).update(balance_micros=wallet.balance_micros + 1)
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="problem"):
        call_command("wallet_audit")


def test_wallet_audit_detects_reserved_mismatch_and_orphan_charge(wallet: Wallet) -> None:
    services.wallet_reserve(wallet=wallet, amount_micros=usd(1), request_id="x", expires_in=MINUTE)
    Wallet.objects.filter(pk=wallet.pk).update(reserved_micros=usd(2))
    problems = selectors.wallet_audit_problems()
    assert any("reserved" in p for p in problems)

    Wallet.objects.filter(pk=wallet.pk).update(reserved_micros=usd(1))
    assert selectors.wallet_audit_problems() == []
    # A charge that no reservation explains (written behind the services' back).
    LedgerEntry.objects.create(
        wallet=wallet,
        organization=wallet.organization,
        kind=LedgerEntry.Kind.CHARGE,
        amount_micros=-1,
        balance_after_micros=0,
        request_id="ghost",
    )
    Wallet.objects.filter(pk=wallet.pk).update(balance_micros=usd(10) - 1, spent_micros=1)
    problems = selectors.wallet_audit_problems()
    assert problems
    assert all("ghost" in p for p in problems)


def test_wallet_audit_flags_a_hold_the_sweeper_left_behind(wallet: Wallet) -> None:
    res = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="old", expires_in=MINUTE
    )
    Reservation.objects.filter(pk=res.pk).update(expires_at=res.created_at - timedelta(hours=1))
    assert any("sweeper" in p for p in selectors.wallet_audit_problems())
    services.reservations_release_expired()
    assert selectors.wallet_audit_problems() == []


# --- fan-out holds ----------------------------------------------------------------------------
def test_split_carves_children_out_of_one_hold(wallet: Wallet) -> None:
    parent = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(3), request_id="fan", expires_in=timedelta(minutes=5)
    )
    first = services.reservation_split(parent=parent, request_id="fan.1", amount_micros=usd(1))
    again = services.reservation_split(parent=parent, request_id="fan.1", amount_micros=usd(1))
    assert again.pk == first.pk  # idempotent
    second = services.reservation_split(parent=parent, request_id="fan.2", amount_micros=usd(1))
    wallet.refresh_from_db()
    assert wallet.reserved_micros == usd(3)  # the total held never changed
    parent.refresh_from_db()
    assert parent.amount_micros == usd(1)

    services.reservation_settle(reservation=first, actual_micros=usd(0.25))
    services.reservation_release(reservation=second)
    services.reservation_release(reservation=parent)
    wallet.refresh_from_db()
    assert (wallet.reserved_micros, wallet.balance_micros) == (0, usd(10) - usd(0.25))
    _audit_ok()


def test_split_of_the_whole_remainder_closes_the_parent(wallet: Wallet) -> None:
    parent = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(2), request_id="fan", expires_in=timedelta(minutes=5)
    )
    child = services.reservation_split(parent=parent, request_id="fan.1", amount_micros=usd(2))
    parent.refresh_from_db()
    assert parent.status == Reservation.Status.RELEASED
    services.reservation_release(reservation=parent)  # nothing left: no effect
    wallet.refresh_from_db()
    assert wallet.reserved_micros == usd(2)
    services.reservation_settle(reservation=child, actual_micros=usd(1))
    wallet.refresh_from_db()
    assert (wallet.reserved_micros, wallet.balance_micros) == (0, usd(9))
    with pytest.raises(Conflict):
        services.reservation_split(parent=parent, request_id="fan.2", amount_micros=1)
    _audit_ok()


def test_split_larger_than_the_hold_is_refused(wallet: Wallet) -> None:
    parent = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(1), request_id="fan", expires_in=timedelta(minutes=5)
    )
    with pytest.raises(ApplicationError, match="larger"):
        services.reservation_split(parent=parent, request_id="fan.1", amount_micros=usd(2))
    assert not Reservation.objects.filter(request_id="fan.1").exists()
    wallet.refresh_from_db()
    assert wallet.reserved_micros == usd(1)


def test_repeating_a_reservation_that_used_all_credit_returns_it(wallet: Wallet) -> None:
    first = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(10), request_id="all-in", expires_in=timedelta(minutes=5)
    )
    again = services.wallet_reserve(
        wallet=wallet, amount_micros=usd(10), request_id="all-in", expires_in=timedelta(minutes=5)
    )
    assert again.pk == first.pk
    wallet.refresh_from_db()
    assert wallet.reserved_micros == usd(10)
    _audit_ok()
