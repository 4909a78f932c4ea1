"""Wallets, the append-only ledger, reservations and credit purchases.

All amounts are integers in micro-USD (1 USD = 1_000_000). A wallet's balance is the sum of its
ledger; ``Wallet.balance_micros`` caches that sum and ``Wallet.reserved_micros`` caches the sum of
its held reservations. Both are changed only by :mod:`apps.wallet.services`, in the same
transaction as the ledger entry or reservation that explains the change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from apps.accounts.models import Organization, User

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000


def format_usd(micros: int) -> str:
    """``12_345_678`` → ``"12.345678"``; exact, no floats. Negative amounts keep their sign."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{fraction:06d}"


class Wallet(models.Model):
    """One per organization: the cached balance and holds, plus the low-balance alert settings."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="wallet"
    )
    balance_micros = models.BigIntegerField(default=0)
    reserved_micros = models.BigIntegerField(default=0)
    spent_micros = models.BigIntegerField(
        default=0, help_text="Lifetime charges (a cache of the charge entries, audited)."
    )
    low_balance_threshold_micros = models.BigIntegerField(null=True, blank=True)
    low_balance_alerted = models.BooleanField(
        default=False, help_text="Set when the alert was sent; cleared when available recovers."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            # Defence in depth: the services never get here, the database refuses anyway.
            models.CheckConstraint(
                condition=Q(reserved_micros__gte=0), name="wallet_reserved_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(balance_micros__gte=F("reserved_micros")),
                name="wallet_available_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"Wallet of {self.organization}"

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros


class Reservation(models.Model):
    """A hold on credit for one request, from reserve until settle, release or expiry."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    wallet = models.ForeignKey(Wallet, on_delete=models.RESTRICT, related_name="reservations")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="reservations"
    )
    request_id = models.CharField(max_length=128)
    amount_micros = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.HELD)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    settled_micros = models.BigIntegerField(default=0)
    shortfall_micros = models.BigIntegerField(
        default=0, help_text="Cost that could not be charged because the wallet ran dry."
    )
    usage = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["wallet", "request_id"], name="reservation_unique"),
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="reservation_amount_gt_0"
            ),
        ]
        indexes: ClassVar = [
            models.Index(
                fields=["expires_at"], condition=Q(status="held"), name="reservation_held_expiry"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"


class CreditPurchase(models.Model):
    """A credit purchase through Stripe Checkout. Created pending, paid only by the webhook."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="credit_purchases"
    )
    wallet = models.ForeignKey(Wallet, on_delete=models.RESTRICT, related_name="purchases")
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True)
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    refunded_micros = models.BigIntegerField(default=0)
    disputed_micros = models.BigIntegerField(default=0)
    unrecovered_micros = models.BigIntegerField(
        default=0,
        help_text="Refunded/disputed credit that was already spent, so not taken back.",
    )
    failure_reason = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["stripe_checkout_session_id"],
                condition=~Q(stripe_checkout_session_id=""),
                name="purchase_unique_session",
            ),
            models.UniqueConstraint(
                fields=["stripe_payment_intent_id"],
                condition=~Q(stripe_payment_intent_id=""),
                name="purchase_unique_payment_intent",
            ),
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="purchase_amount_gt_0"),
        ]
        indexes: ClassVar = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} {format_usd(self.amount_micros)} USD ({self.status})"

    @property
    def amount_usd(self) -> str:
        return format_usd(self.amount_micros)


class LedgerEntry(models.Model):
    """One signed movement of money. Append-only: never updated, never deleted."""

    class Kind(models.TextChoices):
        TRIAL_GRANT = "trial_grant", "Trial credit"
        PURCHASE = "purchase", "Purchase"
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

    wallet = models.ForeignKey(Wallet, on_delete=models.RESTRICT, related_name="entries")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices)
    amount_micros = models.BigIntegerField()
    balance_after_micros = models.BigIntegerField()
    purchase = models.ForeignKey(
        CreditPurchase,
        on_delete=models.RESTRICT,
        null=True,
        blank=True,
        related_name="entries",
    )
    request_id = models.CharField(max_length=128, blank=True)
    external_ref = models.CharField(
        max_length=255, blank=True, help_text="Stripe refund/dispute reference (idempotency)."
    )
    actor = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            # Exactly-once guarantees live in the database, not only in code paths.
            models.UniqueConstraint(
                fields=["wallet"], condition=Q(kind="trial_grant"), name="ledger_one_trial"
            ),
            models.UniqueConstraint(
                fields=["purchase"],
                condition=Q(kind="purchase"),
                name="ledger_one_credit_per_purchase",
            ),
            models.UniqueConstraint(
                fields=["wallet", "request_id"],
                condition=Q(kind="charge"),
                name="ledger_one_charge_per_request",
            ),
            models.UniqueConstraint(
                fields=["external_ref"], condition=~Q(external_ref=""), name="ledger_unique_ref"
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind__in=["trial_grant", "purchase"], amount_micros__gt=0)
                    | Q(kind__in=["charge", "refund"], amount_micros__lte=0)
                    | Q(kind="adjustment")
                ),
                name="ledger_sign_by_kind",
            ),
        ]
        indexes: ClassVar = [
            models.Index(fields=["wallet", "-created_at"]),
            models.Index(fields=["organization", "kind", "-created_at"]),
        ]
        ordering: ClassVar = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {format_usd(self.amount_micros)}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A row invariant, not business logic: the ledger is append-only.
        if self.pk is not None:
            raise ValueError("Ledger entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Ledger entries are append-only.")

    @property
    def amount_usd(self) -> str:
        return format_usd(self.amount_micros)
