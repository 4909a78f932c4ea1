"""Reserve and settle for the gateway's hot path: one database round trip each on PostgreSQL.

Every API call reserves before it goes upstream and settles after, so these two run once per
request and their cost is the gateway's overhead. On PostgreSQL they call the functions created
by migration ``wallet.0002`` (``llmwise_wallet_reserve``, ``llmwise_reservation_settle``), which
apply exactly the rules of :func:`services.wallet_reserve` and :func:`services.reservation_settle`
— the conditional hold, lock order reservation → wallet, the charge capped at what is available
with the rest recorded as shortfall, the ledger entry and the cached wallet columns changed
together, the low-balance alert — but as one statement instead of a dozen ORM queries. On SQLite
(the embedded default) they are the ORM services themselves. Anything unusual on the fast path
(no wallet yet, short credit, a repeated request id) is handed to the ORM service, which knows
how to answer it.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.accounts.models import Organization
from llmwise import metrics

from . import services
from .models import Reservation

logger = logging.getLogger("apps.wallet.services")

_RESERVE = "SELECT out_reservation, out_wallet FROM llmwise_wallet_reserve(%s, %s, %s, %s, %s)"
_SETTLE = (
    "SELECT out_status, out_settled, out_shortfall, out_alert, out_fresh"
    " FROM llmwise_reservation_settle(%s, %s, %s::jsonb, %s)"
)


def _fast() -> bool:
    return connection.vendor == "postgresql"


def reserve(
    *, org: Organization, amount_micros: int, request_id: str, expires_in: timedelta
) -> Reservation:
    """:func:`services.wallet_reserve` on ``org``'s wallet; raises ``InsufficientCredit``."""
    if (
        not _fast()
        or amount_micros <= 0
        or not 0 < len(request_id) <= services.MAX_REQUEST_ID_LENGTH
        or expires_in <= timedelta(0)
    ):
        return _reserve_orm(org, amount_micros, request_id, expires_in)
    now = timezone.now()
    expires_at = now + expires_in
    row = None
    try:
        # A savepoint only when a caller's transaction is open (a failed statement must not
        # abort it); on its own the statement is its own transaction, committed at once.
        scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
        with scope, connection.cursor() as cursor:
            cursor.execute(_RESERVE, [org.pk, amount_micros, request_id, now, expires_at])
            row = cursor.fetchone()
    except IntegrityError:
        pass  # the same request id again: the ORM service returns the existing reservation
    if row is None:
        return _reserve_orm(org, amount_micros, request_id, expires_in)
    held = Reservation(
        id=row[0],
        wallet_id=row[1],
        organization_id=org.pk,
        request_id=request_id,
        amount_micros=amount_micros,
        status=Reservation.Status.HELD,
        created_at=now,
        expires_at=expires_at,
    )
    held._state.adding = False
    held._state.db = connection.alias
    return held


def _reserve_orm(
    org: Organization, amount_micros: int, request_id: str, expires_in: timedelta
) -> Reservation:
    return services.wallet_reserve(
        wallet=services.wallet_for_org(org=org),
        amount_micros=amount_micros,
        request_id=request_id,
        expires_in=expires_in,
    )


@metrics.counts_failures("settle")
def settle(
    *, reservation: Reservation, actual_micros: int, usage: dict[str, Any] | None = None
) -> Reservation:
    """:func:`services.reservation_settle`: charge ``actual_micros`` and free the hold.

    Updates ``reservation`` in place to what the database now holds and returns it.
    """
    if not _fast() or isinstance(actual_micros, bool) or actual_micros < 0:
        return services.reservation_settle(
            reservation=reservation, actual_micros=actual_micros, usage=usage
        )
    now = timezone.now()
    usage = usage or {}
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute(_SETTLE, [reservation.pk, actual_micros, json.dumps(usage), now])
            row = cursor.fetchone()
        if row is None:
            raise Reservation.DoesNotExist(f"No reservation {reservation.pk}.")
        status, settled, shortfall, alert, fresh = row
        if alert:
            wallet_id = reservation.wallet_id
            transaction.on_commit(lambda: services.low_balance_alert_send(wallet_id))
    reservation.status = status
    reservation.settled_micros = settled
    reservation.shortfall_micros = shortfall
    if fresh:
        reservation.usage = usage
        reservation.finished_at = now
        if shortfall:
            logger.warning(
                "reservation %s settled with a shortfall of %s micro-USD",
                reservation.request_id,
                shortfall,
            )
    return reservation
