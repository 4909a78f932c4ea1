"""Every movement of money goes through here.

Rules that hold for every function in this module:

* amounts are ``int`` micro-USD; a ledger entry and the cached wallet columns it explains change
  in the same (short) transaction;
* the wallet row is locked last (reservation or purchase first, then wallet), so two services
  never wait on each other in opposite orders;
* ``available = balance - reserved`` never goes below zero: the reserve is one conditional
  ``UPDATE`` and every debit is capped at what is available, with the rest recorded explicitly;
* Stripe I/O (see :mod:`apps.wallet.stripe_gateway`) happens outside any transaction;
* emails go out in ``transaction.on_commit``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from apps.accounts.erasure import redact_text
from apps.accounts.models import Membership, Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from llmwise import metrics
from llmwise.errors import ApplicationError, Conflict, NotFound

from .models import (
    MICROS_PER_CENT,
    CreditPurchase,
    LedgerEntry,
    Reservation,
    Wallet,
    format_usd,
)

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 128
MAX_NOTE_LENGTH = 500
CURRENCY = "usd"


class InsufficientCredit(ApplicationError):
    """The wallet cannot cover the hold: HTTP 402, nothing is sent upstream."""

    status_code: int = 402
    error_type = "insufficient_credit"
    code = "insufficient_credit"


class PaymentProviderError(ApplicationError):
    """Stripe could not be reached or refused the call; nothing was charged."""

    status_code: int = 502
    error_type = "api_error"
    code = "payment_provider_error"


def _require_amount(value: object, *, param: str, allow_zero: bool = False) -> int:
    # bool is an int subclass; True micro-dollars is a bug, not an amount.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApplicationError("Amounts are whole micro-USD integers.", param=param)
    if value < 0 or (value == 0 and not allow_zero):
        raise ApplicationError("The amount must be positive.", param=param)
    return value


# --- wallets ----------------------------------------------------------------------------------
def wallet_for_org(*, org: Organization) -> Wallet:
    """The organization's wallet, created (empty) on first use."""
    wallet, _created = Wallet.objects.get_or_create(organization=org)
    return wallet


def _lock_wallet(wallet_id: int) -> Wallet:
    return Wallet.objects.select_for_update().get(pk=wallet_id)


def _owner_and_admin_emails(org_id: int) -> list[str]:
    return list(
        Membership.objects.filter(organization_id=org_id, role__in=[Role.OWNER, Role.ADMIN])
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def low_balance_alert_send(wallet_id: int) -> None:
    """Email the owners and admins that the wallet is below its threshold (after commit)."""
    wallet = Wallet.objects.select_related("organization").get(pk=wallet_id)
    recipients = _owner_and_admin_emails(wallet.organization_id)
    if not recipients or wallet.low_balance_threshold_micros is None:
        return
    context = {
        "org": wallet.organization,
        "available_usd": format_usd(wallet.available_micros),
        "threshold_usd": format_usd(wallet.low_balance_threshold_micros),
        "billing_url": settings.SITE_URL + reverse("dashboard:billing"),
    }
    send_mail(
        subject=f"[LLMWise] Low balance for {wallet.organization.name}",
        message=render_to_string("wallet/emails/low_balance.txt", context),
        from_email=None,
        recipient_list=recipients,
    )


def _save_wallet(wallet: Wallet) -> None:
    """Persist the locked wallet's cached columns and (re-)arm the low-balance alert.

    The alert fires once when available drops below the threshold and re-arms when it is back
    at or above it, so a wallet hovering around the line does not spam its owners.
    """
    threshold = wallet.low_balance_threshold_micros
    if threshold is not None:
        below = wallet.available_micros < threshold
        if below and not wallet.low_balance_alerted:
            wallet.low_balance_alerted = True
            wallet_id = wallet.pk
            transaction.on_commit(lambda: low_balance_alert_send(wallet_id))
        elif not below and wallet.low_balance_alerted:
            wallet.low_balance_alerted = False
    wallet.updated_at = timezone.now()
    wallet.save(
        update_fields=[
            "balance_micros",
            "reserved_micros",
            "spent_micros",
            "low_balance_threshold_micros",
            "low_balance_alerted",
            "updated_at",
        ]
    )


def _append_entry(
    *,
    wallet: Wallet,
    kind: str,
    amount_micros: int,
    purchase: CreditPurchase | None = None,
    request_id: str = "",
    external_ref: str = "",
    actor: User | None = None,
    note: str = "",
) -> LedgerEntry:
    """Append one entry and apply it to the locked ``wallet`` (saved by the caller)."""
    wallet.balance_micros += amount_micros
    return LedgerEntry.objects.create(
        wallet=wallet,
        organization_id=wallet.organization_id,
        kind=kind,
        amount_micros=amount_micros,
        balance_after_micros=wallet.balance_micros,
        purchase=purchase,
        request_id=request_id,
        external_ref=external_ref,
        actor=actor,
        note=note[:MAX_NOTE_LENGTH],
    )


def wallet_grant(
    *,
    wallet: Wallet,
    amount_micros: int,
    note: str,
    actor: User | None = None,
    kind: str = LedgerEntry.Kind.ADJUSTMENT,
) -> LedgerEntry:
    """An operator's adjustment (positive or negative) or a trial grant, audit-logged.

    A negative adjustment may not take more than is available.
    """
    if kind not in (LedgerEntry.Kind.ADJUSTMENT, LedgerEntry.Kind.TRIAL_GRANT):
        raise ApplicationError("Grants are adjustments or trial credit.", param="kind")
    if not isinstance(amount_micros, int) or isinstance(amount_micros, bool) or not amount_micros:
        raise ApplicationError("The amount must be a non-zero whole number of micro-USD.")
    if kind == LedgerEntry.Kind.TRIAL_GRANT and amount_micros < 0:
        raise ApplicationError("Trial credit must be positive.")
    note = note.strip()
    if not note:
        raise ApplicationError("Say why: a note is required.", param="note")
    with transaction.atomic():
        locked = _lock_wallet(wallet.pk)
        if amount_micros < 0 and locked.available_micros + amount_micros < 0:
            raise ApplicationError(
                f"Only {format_usd(locked.available_micros)} USD is available to take back.",
                param="amount",
            )
        entry = _append_entry(
            wallet=locked, kind=kind, amount_micros=amount_micros, actor=actor, note=note
        )
        _save_wallet(locked)
        audit_record(
            org=locked.organization,
            actor=actor,
            action="wallet.grant" if kind == LedgerEntry.Kind.ADJUSTMENT else "wallet.trial_grant",
            target=f"ledger:{entry.pk}",
            data={"kind": kind, "amount_usd": format_usd(amount_micros), "note": entry.note},
        )
    wallet.refresh_from_db()
    return entry


def wallet_grant_trial(*, org: Organization) -> LedgerEntry | None:
    """Grant the trial credit once per organization; None when already granted or disabled."""
    amount = int(settings.TRIAL_CREDIT_MICROS)
    if amount <= 0:
        return None
    wallet = wallet_for_org(org=org)
    if LedgerEntry.objects.filter(wallet=wallet, kind=LedgerEntry.Kind.TRIAL_GRANT).exists():
        return None
    try:
        return wallet_grant(
            wallet=wallet,
            amount_micros=amount,
            note="Trial credit",
            kind=LedgerEntry.Kind.TRIAL_GRANT,
        )
    except IntegrityError:  # a concurrent grant won the unique constraint
        return None


def trial_grant_for_user(*, user: User) -> LedgerEntry | None:
    """Trial credit for the personal organization this (verified) user owns."""
    org = (
        Organization.objects.filter(
            is_personal=True, memberships__user=user, memberships__role=Role.OWNER
        )
        .order_by("created_at", "pk")
        .first()
    )
    if org is None:
        return None
    return wallet_grant_trial(org=org)


@transaction.atomic
def wallet_set_low_balance_alert(
    *, org: Organization, actor: User | None, threshold_micros: int | None
) -> Wallet:
    """Set (or clear, with None) the available-credit level below which owners get an email."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    if threshold_micros is not None:
        _require_amount(threshold_micros, param="threshold")
    wallet = _lock_wallet(wallet_for_org(org=org).pk)
    before = wallet.low_balance_threshold_micros
    wallet.low_balance_threshold_micros = threshold_micros
    wallet.low_balance_alerted = False  # re-arm; _save_wallet fires at once if already below
    _save_wallet(wallet)
    audit_record(
        org=org,
        actor=actor,
        action="wallet.low_balance_alert",
        target=f"wallet:{wallet.pk}",
        data={
            "from": format_usd(before) if before is not None else None,
            "to": format_usd(threshold_micros) if threshold_micros is not None else None,
        },
    )
    return wallet


# --- reserve → settle / release ---------------------------------------------------------------
def wallet_reserve(
    *, wallet: Wallet, amount_micros: int, request_id: str, expires_in: timedelta
) -> Reservation:
    """Hold ``amount_micros`` for ``request_id`` or raise :class:`InsufficientCredit`.

    The hold is one conditional ``UPDATE … WHERE balance - reserved >= amount``: concurrent
    reserves queue on the row lock and each re-checks the condition, so no interleaving can
    overspend. Idempotent: the same ``request_id`` returns the existing reservation.
    """
    _require_amount(amount_micros, param="amount_micros")
    if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise ApplicationError("A request id of 1 to 128 characters is required.")
    if expires_in <= timedelta(0):
        raise ApplicationError("A reservation must expire in the future.", param="expires_in")
    # The hot path: no read before the write. A repeated request id is caught by the unique
    # constraint (its transaction, hold included, rolls back) or, when credit is short, looked
    # up before answering 402.
    now = timezone.now()
    try:
        with transaction.atomic():
            held = Wallet.objects.filter(
                pk=wallet.pk, balance_micros__gte=F("reserved_micros") + amount_micros
            ).update(reserved_micros=F("reserved_micros") + amount_micros, updated_at=now)
            if not held:
                existing = Reservation.objects.filter(
                    wallet_id=wallet.pk, request_id=request_id
                ).first()
                if existing is not None:
                    return existing
                raise InsufficientCredit(
                    "Not enough credit for this request. Add credit on the billing page."
                )
            return Reservation.objects.create(
                wallet_id=wallet.pk,
                organization_id=wallet.organization_id,
                request_id=request_id,
                amount_micros=amount_micros,
                created_at=now,
                expires_at=now + expires_in,
            )
    except IntegrityError:
        # The same request id reserved concurrently: our hold rolled back with the transaction.
        return Reservation.objects.get(wallet_id=wallet.pk, request_id=request_id)


@metrics.counts_failures("settle")
def reservation_settle(
    *, reservation: Reservation, actual_micros: int, usage: dict[str, Any] | None = None
) -> Reservation:
    """Charge the actual cost and free the hold, in one transaction. Idempotent.

    The charge is capped at what the wallet has once this hold is freed; anything above is
    recorded as ``shortfall_micros`` and the balance never goes negative. A reservation the
    sweeper already expired (a slow worker) is still charged, without a hold to draw on. A
    released reservation means the call never happened: settling it changes nothing.
    """
    _require_amount(actual_micros, param="actual_micros", allow_zero=True)
    # No savepoint when the caller already holds a transaction (the gateway settles and logs
    # in one): nothing here is caught and retried, so a failure aborts the caller's transaction.
    with transaction.atomic(savepoint=False):
        res = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if res.status in (Reservation.Status.SETTLED, Reservation.Status.RELEASED):
            return res
        wallet = _lock_wallet(res.wallet_id)
        if res.status == Reservation.Status.HELD:
            wallet.reserved_micros -= res.amount_micros
        charged = min(actual_micros, max(wallet.available_micros, 0))
        if charged:
            _append_entry(
                wallet=wallet,
                kind=LedgerEntry.Kind.CHARGE,
                amount_micros=-charged,
                request_id=res.request_id,
            )
        wallet.spent_micros += charged
        _save_wallet(wallet)
        res.status = Reservation.Status.SETTLED
        res.settled_micros = charged
        res.shortfall_micros = actual_micros - charged
        res.usage = usage or {}
        res.finished_at = timezone.now()
        res.save(
            update_fields=["status", "settled_micros", "shortfall_micros", "usage", "finished_at"]
        )
        if res.shortfall_micros:
            logger.warning(
                "reservation %s settled with a shortfall of %s micro-USD",
                res.request_id,
                res.shortfall_micros,
            )
    return res


def _finish_hold(reservation_id: int, status: str, *, only_expired: bool) -> Reservation | None:
    with transaction.atomic():
        res = Reservation.objects.select_for_update().get(pk=reservation_id)
        if res.status != Reservation.Status.HELD:
            return None
        if only_expired and res.expires_at > timezone.now():
            return None
        wallet = _lock_wallet(res.wallet_id)
        wallet.reserved_micros -= res.amount_micros
        _save_wallet(wallet)
        res.status = status
        res.finished_at = timezone.now()
        res.save(update_fields=["status", "finished_at"])
        return res


@metrics.counts_failures("release")
def reservation_release(*, reservation: Reservation) -> Reservation:
    """Free the whole hold without charging (the call never reached a provider). Idempotent."""
    _finish_hold(reservation.pk, Reservation.Status.RELEASED, only_expired=False)
    return Reservation.objects.get(pk=reservation.pk)


def reservation_split(*, parent: Reservation, request_id: str, amount_micros: int) -> Reservation:
    """Carve a child hold for ``request_id`` out of a held ``parent`` (a fan-out's single hold).

    The total held does not change: the parent shrinks by ``amount_micros`` and a child of that
    size appears, to be settled or released on its own like any reservation. Taking the whole
    remainder closes the parent (status released, nothing left to free). Idempotent by
    ``request_id``. The caller releases what the parent still holds when the fan-out is done.
    """
    _require_amount(amount_micros, param="amount_micros")
    if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise ApplicationError("A request id of 1 to 128 characters is required.")
    with transaction.atomic():
        held = Reservation.objects.select_for_update().get(pk=parent.pk)
        existing = Reservation.objects.filter(wallet_id=held.wallet_id, request_id=request_id)
        child = existing.first()
        if child is not None:
            return child
        if held.status != Reservation.Status.HELD:
            raise Conflict("The fan-out's hold is no longer held.", code="hold_finished")
        if amount_micros > held.amount_micros:
            raise ApplicationError(
                "The part asked for is larger than what the fan-out still holds.",
                code="hold_too_small",
            )
        now = timezone.now()
        if amount_micros == held.amount_micros:
            held.status = Reservation.Status.RELEASED  # everything moved to the child
            held.finished_at = now
            held.save(update_fields=["status", "finished_at"])
        else:
            held.amount_micros -= amount_micros
            held.save(update_fields=["amount_micros"])
        return Reservation.objects.create(
            wallet_id=held.wallet_id,
            organization_id=held.organization_id,
            request_id=request_id,
            amount_micros=amount_micros,
            created_at=now,
            expires_at=held.expires_at,
        )


def reservations_release_expired(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire held reservations past their deadline (a crashed worker's holds). Returns the count.

    One short transaction per reservation, so the sweeper never holds many wallet locks.
    """
    cutoff = now or timezone.now()
    ids = list(
        Reservation.objects.filter(status=Reservation.Status.HELD, expires_at__lte=cutoff)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    released = 0
    for reservation_id in ids:
        if _finish_hold(reservation_id, Reservation.Status.EXPIRED, only_expired=True):
            released += 1
    if released:
        logger.info("released %s expired reservation(s)", released)
    return released


# --- purchases --------------------------------------------------------------------------------
def _new_public_id() -> str:
    return "pur_" + secrets.token_hex(12)


def purchase_validate_amount(*, amount_micros: int, currency: str) -> None:
    """The rules every purchase follows: USD, whole cents, between the configured min and max."""
    if currency.lower() != CURRENCY:
        raise ApplicationError("Credit is sold in USD only.", param="currency")
    _require_amount(amount_micros, param="amount")
    low, high = settings.WALLET_PURCHASE_MIN_MICROS, settings.WALLET_PURCHASE_MAX_MICROS
    if amount_micros % MICROS_PER_CENT:
        raise ApplicationError("Amounts are in whole cents.", param="amount")
    if not low <= amount_micros <= high:
        raise ApplicationError(
            f"Buy between ${format_usd(low)[:-4]} and ${format_usd(high)[:-4]}.", param="amount"
        )


@dataclass(frozen=True)
class CheckoutUrls:
    success_url: str
    cancel_url: str


def purchase_checkout_start(
    *,
    org: Organization,
    actor: User | None,
    amount_micros: int,
    currency: str,
    urls: CheckoutUrls,
) -> CreditPurchase:
    """Create a pending purchase, then a Stripe Checkout Session for it (outside any lock).

    The purchase row exists (committed) before Stripe is called, so a webhook can always find
    it; the session id is saved afterwards. A Stripe failure marks the purchase failed.
    """
    from . import stripe_gateway  # Stripe lives in one module; imported lazily for the CLI

    membership_require(org=org, user=actor, role=Role.ADMIN)
    purchase_validate_amount(amount_micros=amount_micros, currency=currency)
    wallet = wallet_for_org(org=org)
    with transaction.atomic():
        purchase = CreditPurchase.objects.create(
            public_id=_new_public_id(),
            organization=org,
            wallet=wallet,
            amount_micros=amount_micros,
            currency=CURRENCY,
            created_by=actor,
        )
        audit_record(
            org=org,
            actor=actor,
            action="purchase.start",
            target=f"purchase:{purchase.public_id}",
            data={"amount_usd": purchase.amount_usd},
        )
    try:
        session = stripe_gateway.checkout_session_create(
            purchase=purchase,
            success_url=urls.success_url,
            cancel_url=urls.cancel_url,
            customer_email=actor.email if actor is not None else None,
        )
    except stripe_gateway.StripeUnavailable as exc:
        with transaction.atomic():
            CreditPurchase.objects.filter(
                pk=purchase.pk, status=CreditPurchase.Status.PENDING
            ).update(status=CreditPurchase.Status.FAILED, failure_reason=str(exc)[:255])
        raise PaymentProviderError(
            "The payment provider is unavailable right now; nothing was charged. "
            "Please try again in a minute."
        ) from exc
    with transaction.atomic():
        locked = CreditPurchase.objects.select_for_update().get(pk=purchase.pk)
        if not locked.stripe_checkout_session_id:
            locked.stripe_checkout_session_id = session.id
        locked.checkout_url = session.url
        locked.save(update_fields=["stripe_checkout_session_id", "checkout_url"])
    return locked


def purchase_credit(
    *,
    public_id: str,
    checkout_session_id: str,
    payment_intent_id: str,
    amount_cents: int,
    currency: str,
) -> CreditPurchase:
    """Credit a paid purchase to its wallet: exactly once, whatever the replay or ordering.

    Called only with data from a verified Stripe event. The purchase row is locked, so two
    deliveries of the same event serialize; the second finds it paid and does nothing (and a
    unique constraint on the ledger backs this up). Distrustful: the session id, amount and
    currency must match what we asked Stripe for.
    """
    with transaction.atomic():
        purchase = CreditPurchase.objects.select_for_update().filter(public_id=public_id).first()
        if purchase is None:
            raise NotFound(f"No purchase {public_id!r}.")
        if purchase.stripe_checkout_session_id not in ("", checkout_session_id):
            raise Conflict(f"Purchase {public_id} belongs to another checkout session.")
        if purchase.status in (CreditPurchase.Status.PAID, CreditPurchase.Status.REFUNDED):
            return purchase
        if amount_cents * MICROS_PER_CENT != purchase.amount_micros or currency != CURRENCY:
            raise Conflict(
                f"Purchase {public_id}: paid {amount_cents} {currency} cents, "
                f"expected {purchase.amount_micros // MICROS_PER_CENT} {CURRENCY}."
            )
        if purchase.status == CreditPurchase.Status.FAILED:
            # A real payment is never dropped, even if we had given up on the session.
            logger.warning("crediting purchase %s that was marked failed", public_id)
        wallet = _lock_wallet(purchase.wallet_id)
        entry = _append_entry(
            wallet=wallet,
            kind=LedgerEntry.Kind.PURCHASE,
            amount_micros=purchase.amount_micros,
            purchase=purchase,
            note=f"Stripe payment {payment_intent_id}".strip(),
        )
        _save_wallet(wallet)
        purchase.status = CreditPurchase.Status.PAID
        purchase.stripe_checkout_session_id = checkout_session_id
        purchase.stripe_payment_intent_id = payment_intent_id
        purchase.paid_at = timezone.now()
        purchase.failure_reason = ""
        purchase.save()
        audit_record(
            org=purchase.organization,
            actor=None,
            action="purchase.paid",
            target=f"purchase:{purchase.public_id}",
            data={
                "amount_usd": purchase.amount_usd,
                "payment_intent": payment_intent_id,
                "ledger": entry.pk,
            },
        )
    return purchase


def purchase_mark_failed(*, public_id: str, checkout_session_id: str, reason: str) -> None:
    """An expired or failed checkout: the pending purchase is closed. Paid ones stay paid."""
    with transaction.atomic():
        purchase = (
            CreditPurchase.objects.select_for_update()
            .filter(public_id=public_id, status=CreditPurchase.Status.PENDING)
            .first()
        )
        if purchase is None or purchase.stripe_checkout_session_id not in (
            "",
            checkout_session_id,
        ):
            return
        purchase.status = CreditPurchase.Status.FAILED
        purchase.failure_reason = reason[:255]
        purchase.save(update_fields=["status", "failure_reason"])


def _lock_paid_purchase(payment_intent_id: str) -> CreditPurchase:
    purchase = (
        CreditPurchase.objects.select_for_update()
        .filter(stripe_payment_intent_id=payment_intent_id)
        .first()
    )
    if purchase is None or not payment_intent_id:
        raise NotFound(f"No credited purchase for payment {payment_intent_id!r}.")
    return purchase


def _take_back(
    *,
    purchase: CreditPurchase,
    amount_micros: int,
    kind: str,
    external_ref: str,
    note: str,
) -> int:
    """Debit up to ``amount_micros`` (never below available); returns what could not be taken."""
    wallet = _lock_wallet(purchase.wallet_id)
    taken = min(amount_micros, max(wallet.available_micros, 0))
    _append_entry(
        wallet=wallet,
        kind=kind,
        amount_micros=-taken,
        purchase=purchase,
        external_ref=external_ref,
        note=note,
    )
    _save_wallet(wallet)
    return amount_micros - taken


def purchase_refund_record(
    *, payment_intent_id: str, charge_id: str, amount_refunded_cents: int
) -> CreditPurchase:
    """Apply Stripe's cumulative ``amount_refunded`` for a charge. Idempotent and order-proof:
    only growth of the cumulative amount is taken back, so replays and stale events do nothing.
    Credit already spent is not clawed into a negative balance; it is recorded as unrecovered.
    """
    with transaction.atomic():
        purchase = _lock_paid_purchase(payment_intent_id)
        total = min(amount_refunded_cents * MICROS_PER_CENT, purchase.amount_micros)
        delta = total - purchase.refunded_micros
        if delta <= 0:
            return purchase
        unrecovered = _take_back(
            purchase=purchase,
            amount_micros=delta,
            kind=LedgerEntry.Kind.REFUND,
            external_ref=f"refund:{charge_id}:{total}",
            note=f"Stripe refund of charge {charge_id}",
        )
        purchase.refunded_micros = total
        purchase.unrecovered_micros += unrecovered
        if total >= purchase.amount_micros:
            purchase.status = CreditPurchase.Status.REFUNDED
        purchase.save(update_fields=["refunded_micros", "unrecovered_micros", "status"])
        audit_record(
            org=purchase.organization,
            actor=None,
            action="purchase.refund",
            target=f"purchase:{purchase.public_id}",
            data={"refunded_usd": format_usd(total), "unrecovered_usd": format_usd(unrecovered)},
        )
    return purchase


def purchase_dispute_record(
    *, payment_intent_id: str, dispute_id: str, amount_cents: int
) -> CreditPurchase:
    """A chargeback opened: take the disputed credit back (once per dispute)."""
    external_ref = f"dispute:{dispute_id}"
    with transaction.atomic():
        purchase = _lock_paid_purchase(payment_intent_id)
        if LedgerEntry.objects.filter(external_ref=external_ref).exists():
            return purchase
        amount = min(amount_cents * MICROS_PER_CENT, purchase.amount_micros)
        unrecovered = _take_back(
            purchase=purchase,
            amount_micros=amount,
            kind=LedgerEntry.Kind.ADJUSTMENT,
            external_ref=external_ref,
            note=f"Stripe dispute {dispute_id}",
        )
        purchase.disputed_micros += amount
        purchase.unrecovered_micros += unrecovered
        purchase.save(update_fields=["disputed_micros", "unrecovered_micros"])
        audit_record(
            org=purchase.organization,
            actor=None,
            action="purchase.dispute",
            target=f"purchase:{purchase.public_id}",
            data={"disputed_usd": format_usd(amount), "unrecovered_usd": format_usd(unrecovered)},
        )
    return purchase


# --- Stripe events ----------------------------------------------------------------------------
def _credit_from_session(session: dict[str, Any]) -> CreditPurchase:
    metadata = session.get("metadata") or {}
    return purchase_credit(
        public_id=str(session.get("client_reference_id") or metadata.get("purchase_id") or ""),
        checkout_session_id=str(session["id"]),
        payment_intent_id=str(session.get("payment_intent") or ""),
        amount_cents=int(session["amount_total"]),
        currency=str(session["currency"]),
    )


def _ensure_credited(payment_intent_id: str) -> None:
    """Before a refund or dispute: make sure the payment itself was credited.

    Stripe does not promise event order; if ``charge.refunded`` overtakes
    ``checkout.session.completed``, ask Stripe which session the payment belongs to and credit
    it first (idempotent), so the refund has something to refund.
    """
    from . import stripe_gateway

    if (
        not payment_intent_id
        or CreditPurchase.objects.filter(stripe_payment_intent_id=payment_intent_id).exists()
    ):
        return
    for session in stripe_gateway.checkout_sessions_for_payment_intent(payment_intent_id):
        if session.get("payment_status") == "paid" and session.get("mode") == "payment":
            _credit_from_session(session)


def stripe_event_process(*, event: dict[str, Any]) -> str:
    """Apply one verified Stripe event. Returns a short outcome for the log and the response.

    Raises :class:`NotFound` for payments that are not ours, :class:`Conflict` for events that
    contradict our records, ``KeyError``/``TypeError``/``ValueError`` for malformed objects.
    """
    event_type = str(event["type"])
    obj: dict[str, Any] = event["data"]["object"]
    if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if obj.get("mode") != "payment":
            return "ignored"
        if obj.get("payment_status") != "paid":
            return "awaiting_payment"  # delayed methods: async_payment_succeeded follows
        _credit_from_session(obj)
        return "credited"
    if event_type in ("checkout.session.async_payment_failed", "checkout.session.expired"):
        purchase_mark_failed(
            public_id=str(obj.get("client_reference_id") or ""),
            checkout_session_id=str(obj["id"]),
            reason=event_type,
        )
        return "failed"
    if event_type == "charge.refunded":
        payment_intent_id = str(obj.get("payment_intent") or "")
        _ensure_credited(payment_intent_id)
        purchase_refund_record(
            payment_intent_id=payment_intent_id,
            charge_id=str(obj["id"]),
            amount_refunded_cents=int(obj["amount_refunded"]),
        )
        return "refunded"
    if event_type == "charge.dispute.created":
        payment_intent_id = str(obj.get("payment_intent") or "")
        _ensure_credited(payment_intent_id)
        purchase_dispute_record(
            payment_intent_id=payment_intent_id,
            dispute_id=str(obj["id"]),
            amount_cents=int(obj["amount"]),
        )
        return "disputed"
    return "ignored"


# --- closing an organization, erasing personal data ---------------------------------------------
def wallet_holds_release(*, org: Organization) -> int:
    """Release every hold ``org`` still has, because the organization is being closed.

    Each hold goes through the same path as :func:`reservation_release` (reservation locked,
    then the wallet; reserved column and reservation change together). A call still in flight
    at that instant later settles against a released reservation, which charges nothing: closing
    forgives at most the calls of that moment, and never moves the balance. Returns the count.
    """
    held = (
        Reservation.objects.filter(organization=org, status=Reservation.Status.HELD)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    released = 0
    for reservation_id in list(held):
        if _finish_hold(reservation_id, Reservation.Status.RELEASED, only_expired=False):
            released += 1
    return released


def ledger_notes_redact(
    *,
    texts: Sequence[str],
    replacement: str,
    org: Organization | None = None,
    every_email: bool = False,
) -> int:
    """Take personal data out of ledger notes: each of ``texts`` (email addresses, matched
    case-insensitively) becomes ``replacement``; with ``every_email`` (a closed organization)
    any address does. Only ``org``'s ledger, or every ledger when ``org`` is None.

    The one change a ledger row's own columns ever see (a deleted user's ``actor`` link is
    emptied by the database's SET NULL): amounts, kinds, balances, references and dates stay as
    they were, so every sum and ``wallet_audit`` still hold. Returns the entries changed.
    """
    mentions = Q()
    for needle in texts:
        if needle:
            mentions |= Q(note__icontains=needle)
    if every_email:
        mentions |= Q(note__contains="@")
    if not mentions:
        return 0
    entries = LedgerEntry.objects.filter(mentions)
    if org is not None:
        entries = entries.filter(organization=org)
    changed = 0
    for pk, note in entries.order_by("pk").values_list("pk", "note").iterator(chunk_size=500):
        redacted = redact_text(note, texts=texts, replacement=replacement, every_email=every_email)
        redacted = redacted[:MAX_NOTE_LENGTH]
        if redacted != note:
            # A queryset update: LedgerEntry.save() refuses to touch an existing row, by design.
            LedgerEntry.objects.filter(pk=pk).update(note=redacted)
            changed += 1
    return changed
