"""Reads of wallet data. Tenant first, always."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.accounts.models import Organization
from llmwise.errors import NotFound

from .models import CreditPurchase, LedgerEntry, Reservation, Wallet, format_usd


@dataclass(frozen=True)
class WalletSummary:
    balance_micros: int
    reserved_micros: int
    available_micros: int
    spent_micros: int
    low_balance_threshold_micros: int | None

    def usd(self, field: str) -> str:
        return format_usd(getattr(self, field))


def wallet_summary(*, org: Organization) -> WalletSummary:
    """Balance, holds and lifetime spend; zeros for an org that never had a wallet."""
    wallet = Wallet.objects.filter(organization=org).first()
    if wallet is None:
        return WalletSummary(0, 0, 0, 0, None)
    return WalletSummary(
        balance_micros=wallet.balance_micros,
        reserved_micros=wallet.reserved_micros,
        available_micros=wallet.available_micros,
        spent_micros=wallet.spent_micros,
        low_balance_threshold_micros=wallet.low_balance_threshold_micros,
    )


def ledger_entries_of(
    *,
    org: Organization,
    kind: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[LedgerEntry]:
    """Ledger entries, newest first, filtered by kind and an inclusive UTC date range."""
    entries = LedgerEntry.objects.filter(organization=org).select_related("purchase", "actor")
    if kind:
        entries = entries.filter(kind=kind)
    if date_from is not None:
        entries = entries.filter(created_at__gte=datetime.combine(date_from, time.min, tzinfo=UTC))
    if date_to is not None:
        end = datetime.combine(date_to, time.min, tzinfo=UTC) + timedelta(days=1)
        entries = entries.filter(created_at__lt=end)
    return entries.order_by("-created_at", "-id")


def purchases_of(*, org: Organization) -> QuerySet[CreditPurchase]:
    return CreditPurchase.objects.filter(organization=org).order_by("-created_at", "-id")


def purchase_of(*, org: Organization, public_id: str) -> CreditPurchase:
    """One of ``org``'s purchases; another tenant's is simply not found."""
    purchase = CreditPurchase.objects.filter(organization=org, public_id=public_id).first()
    if purchase is None:
        raise NotFound("Purchase not found.")
    return purchase


# --- wallet_audit -----------------------------------------------------------------------------
def wallet_audit_problems() -> list[str]:
    """Every inconsistency in every wallet; empty when the books balance.

    Checks: ledger sum == cached balance; cached lifetime spend == charges; reserved == sum of
    held reservations; available and reserved are not negative; no hold was left behind by the
    sweeper; every settled charge has its ledger entry and every charge its reservation; every
    paid purchase was credited exactly once; every row belongs to its wallet's organization.
    """
    problems: list[str] = []
    ledger_sum = (
        LedgerEntry.objects.filter(wallet=OuterRef("pk"))
        .values("wallet")
        .annotate(total=Sum("amount_micros"))
        .values("total")
    )
    charge_sum = (
        LedgerEntry.objects.filter(wallet=OuterRef("pk"), kind=LedgerEntry.Kind.CHARGE)
        .values("wallet")
        .annotate(total=Sum("amount_micros"))
        .values("total")
    )
    held_sum = (
        Reservation.objects.filter(wallet=OuterRef("pk"), status=Reservation.Status.HELD)
        .values("wallet")
        .annotate(total=Sum("amount_micros"))
        .values("total")
    )
    wallets = Wallet.objects.select_related("organization").annotate(
        ledger_total=Coalesce(Subquery(ledger_sum), 0),
        charge_total=Coalesce(Subquery(charge_sum), 0),
        held_total=Coalesce(Subquery(held_sum), 0),
    )
    for wallet in wallets.order_by("pk").iterator():
        name = f"wallet {wallet.pk} ({wallet.organization.slug})"
        if wallet.ledger_total != wallet.balance_micros:
            problems.append(
                f"{name}: balance {wallet.balance_micros} != ledger sum {wallet.ledger_total}"
            )
        if -wallet.charge_total != wallet.spent_micros:
            problems.append(
                f"{name}: lifetime spend {wallet.spent_micros} != charges {-wallet.charge_total}"
            )
        if wallet.held_total != wallet.reserved_micros:
            problems.append(
                f"{name}: reserved {wallet.reserved_micros} != held reservations "
                f"{wallet.held_total}"
            )
        if wallet.reserved_micros < 0:
            problems.append(f"{name}: negative reserved {wallet.reserved_micros}")
        if wallet.available_micros < 0:
            problems.append(f"{name}: negative available {wallet.available_micros}")

    grace = timedelta(seconds=settings.WALLET_SWEEP_GRACE_SECONDS)
    stale = Reservation.objects.filter(
        status=Reservation.Status.HELD, expires_at__lt=timezone.now() - grace
    )
    for res in stale.order_by("pk")[:100]:
        problems.append(f"reservation {res.request_id}: held past expiry (is the sweeper running?)")

    charges = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE)
    settled = Reservation.objects.filter(status=Reservation.Status.SETTLED, settled_micros__gt=0)
    matching_charge = charges.filter(
        wallet=OuterRef("wallet"),
        request_id=OuterRef("request_id"),
        amount_micros=-OuterRef("settled_micros"),
    )
    for res in settled.exclude(Exists(matching_charge)).order_by("pk")[:100]:
        problems.append(
            f"reservation {res.request_id}: settled {res.settled_micros} without a matching charge"
        )
    its_reservation = Reservation.objects.filter(
        wallet=OuterRef("wallet"), request_id=OuterRef("request_id")
    )
    orphans = charges.exclude(Exists(its_reservation)).order_by("pk")[:100]
    for entry in orphans:
        problems.append(f"ledger {entry.pk}: charge for {entry.request_id!r} has no reservation")

    credited = CreditPurchase.objects.annotate(
        credits=Count("entries", filter=Q(entries__kind=LedgerEntry.Kind.PURCHASE))
    )
    for purchase in credited.filter(
        Q(status__in=[CreditPurchase.Status.PAID, CreditPurchase.Status.REFUNDED], credits__lt=1)
        | Q(credits__gt=1)
        | Q(status__in=[CreditPurchase.Status.PENDING, CreditPurchase.Status.FAILED], credits__gt=0)
    ).order_by("pk")[:100]:
        problems.append(
            f"purchase {purchase.public_id}: status {purchase.status} with "
            f"{purchase.credits} purchase credit(s)"
        )

    for model, label in ((LedgerEntry, "ledger"), (Reservation, "reservation")):
        for pk in (
            model.objects.exclude(organization_id=F("wallet__organization_id"))
            .order_by("pk")
            .values_list("pk", flat=True)[:100]
        ):
            problems.append(f"{label} {pk}: organization differs from its wallet's")
    return problems
