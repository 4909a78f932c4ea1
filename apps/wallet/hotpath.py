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
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation

from apps.accounts.models import Organization
from llmwise import metrics
from llmwise.http import run_db

from . import services
from .models import Reservation

logger = logging.getLogger("apps.wallet.services")

_RESERVE = "SELECT out_reservation, out_wallet FROM llmwise_wallet_reserve(%s, %s, %s, %s, %s)"
# The event loop's reserve commits without waiting for its WAL flush (``synchronous_commit``
# off for that one transaction, set inside the statement): the hold is visible to every other
# transaction at once, so it guards the balance exactly as before; it becomes durable within
# PostgreSQL's WAL writer delay, or with the next synchronous commit, whichever comes first —
# the call's own settle, which flushes the WAL up to itself, the hold included. Only a crash of
# the database in that instant can lose a hold, together with its wallet update (the books stay
# balanced): that call then finds no hold to settle and goes unbilled, as calls in flight do
# when the database is gone. The settle, which moves money and writes the log, always waits
# for its flush. On this machine the flush was most of a reserve's time (docs/architecture.md).
_RESERVE_NO_FLUSH_WAIT = (
    "SELECT r.out_reservation, r.out_wallet"
    " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait,"
    " llmwise_wallet_reserve(%s, %s, %s, %s, %s) AS r"
)
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
    return _held(
        row,
        org_id=org.pk,
        amount_micros=amount_micros,
        request_id=request_id,
        now=now,
        expires_at=expires_at,
    )


def _held(
    row: Sequence[Any],
    *,
    org_id: int,
    amount_micros: int,
    request_id: str,
    now: datetime,
    expires_at: datetime,
) -> Reservation:
    """The reservation the reserve function's row stands for, as loaded from the database."""
    held = Reservation(
        id=row[0],
        wallet_id=row[1],
        organization_id=org_id,
        request_id=request_id,
        amount_micros=amount_micros,
        status=Reservation.Status.HELD,
        created_at=now,
        expires_at=expires_at,
    )
    held._state.adding = False
    # Not ``connection.alias``: on the event loop each request's context would build its own
    # connection object (asgiref's Local) just to answer "default".
    held._state.db = DEFAULT_DB_ALIAS
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
        alert = row[3]
        if alert:
            wallet_id = reservation.wallet_id
            transaction.on_commit(lambda: services.low_balance_alert_send(wallet_id))
    _settled(reservation, row, usage=usage, now=now)
    return reservation


def _settled(
    reservation: Reservation, row: Sequence[Any], *, usage: dict[str, Any], now: datetime
) -> None:
    """Update ``reservation`` in place from the settle function's row."""
    status, settled, shortfall, _alert, fresh = row[:5]
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


# --- the same two statements from the event loop (llmwise/adb.py) ---------------------------
async def areserve(
    conn: AsyncConnection[Any],
    *,
    org_id: int,
    amount_micros: int,
    request_id: str,
    expires_in: timedelta,
) -> Reservation | None:
    """:func:`reserve` on an autocommit async connection: the held reservation, or None when
    the fast path cannot answer (no wallet yet, short credit, a repeated request id, odd
    arguments): the caller then asks :func:`reserve`, whose ORM service knows the answer."""
    if (
        amount_micros <= 0
        or not 0 < len(request_id) <= services.MAX_REQUEST_ID_LENGTH
        or expires_in <= timedelta(0)
    ):
        return None
    now = timezone.now()
    expires_at = now + expires_in
    try:
        cursor = await conn.execute(
            _RESERVE_NO_FLUSH_WAIT, [org_id, amount_micros, request_id, now, expires_at]
        )
        row = await cursor.fetchone()
    except UniqueViolation:
        return None
    if row is None:
        return None
    return _held(
        row,
        org_id=org_id,
        amount_micros=amount_micros,
        request_id=request_id,
        now=now,
        expires_at=expires_at,
    )


async def asettle_with(
    conn: AsyncConnection[Any],
    *,
    reservation: Reservation,
    actual_micros: int,
    usage: dict[str, Any],
    insert: tuple[str, Sequence[Any]],
) -> Any:
    """:func:`settle` and one more row in a single statement, hence one transaction: the row
    is written exactly when the money moved. ``insert`` is ``(columns SQL, values)``: the
    table and its column list (``"t (a, b)"``) and the values of one row; the row's id is
    returned. Updates ``reservation`` in place as :func:`settle` does. The low-balance alert
    is sent (on a database thread: it is ORM and e-mail work) after the statement committed.
    """
    target, values = insert
    placeholders = ", ".join(["%s"] * len(values))
    now = timezone.now()
    # The settle runs first (its locks, reservation then wallet, in the services' order); the
    # insert takes its values through the settle's row, so a reservation that is not there
    # writes nothing either.
    sql = (
        "WITH settled AS (SELECT * FROM llmwise_reservation_settle(%s, %s, %s::jsonb, %s)),"  # noqa: S608 - names from model metadata, values as parameters
        f" written AS (INSERT INTO {target} SELECT {placeholders} FROM settled RETURNING id)"
        " SELECT s.out_status, s.out_settled, s.out_shortfall, s.out_alert, s.out_fresh,"
        " (SELECT id FROM written) FROM settled s"
    )
    try:
        cursor = await conn.execute(
            sql, [reservation.pk, actual_micros, json.dumps(usage), now, *values]
        )
        row = await cursor.fetchone()
        if row is None:
            raise Reservation.DoesNotExist(f"No reservation {reservation.pk}.")
    except Exception as exc:
        metrics.money_operation_failed("settle", exc)
        raise
    _settled(reservation, row, usage=usage, now=now)
    alert, written_id = row[3], row[5]
    if alert:
        await run_db(services.low_balance_alert_send, wallet_id=reservation.wallet_id)
    return written_id
