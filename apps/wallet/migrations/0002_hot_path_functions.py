"""PostgreSQL functions for the gateway's hot path: reserve and settle in one round trip each.

They implement exactly the rules of :func:`apps.wallet.services.wallet_reserve` and
:func:`apps.wallet.services.reservation_settle` (see :mod:`apps.wallet.hotpath`, their only
caller). On SQLite nothing is created: the embedded default keeps using the ORM services.
Changing a rule means changing both, and a new migration that replaces these functions.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

RESERVE = """
CREATE OR REPLACE FUNCTION llmwise_wallet_reserve(
    p_org bigint, p_amount bigint, p_request_id varchar, p_now timestamptz, p_expires timestamptz
) RETURNS TABLE (out_reservation bigint, out_wallet bigint)
LANGUAGE sql AS $$
    -- One conditional UPDATE holds the credit (concurrent holds queue on the row lock and each
    -- re-checks the condition); the INSERT only runs when it held. A repeated request id makes
    -- the INSERT fail on reservation_unique, which rolls the hold back with the statement.
    WITH held AS (
        UPDATE wallet_wallet
           SET reserved_micros = reserved_micros + p_amount, updated_at = p_now
         WHERE organization_id = p_org AND balance_micros >= reserved_micros + p_amount
     RETURNING id, organization_id
    )
    INSERT INTO wallet_reservation (
        wallet_id, organization_id, request_id, amount_micros, status, created_at, expires_at,
        finished_at, settled_micros, shortfall_micros, usage
    )
    SELECT id, organization_id, p_request_id, p_amount, 'held', p_now, p_expires,
           NULL, 0, 0, '{}'::jsonb
      FROM held
 RETURNING id, wallet_id
$$;
"""

SETTLE = """
CREATE OR REPLACE FUNCTION llmwise_reservation_settle(
    p_reservation bigint, p_actual bigint, p_usage jsonb, p_now timestamptz
) RETURNS TABLE (
    out_status varchar, out_settled bigint, out_shortfall bigint, out_alert boolean, out_fresh boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    r wallet_reservation%ROWTYPE;
    w wallet_wallet%ROWTYPE;
    v_charged bigint;
    v_alert boolean := false;
BEGIN
    -- Reservation first, then wallet: the lock order of every wallet service.
    SELECT * INTO r FROM wallet_reservation WHERE id = p_reservation FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF r.status IN ('settled', 'released') THEN
        -- Idempotent: settled once already, or the call never happened.
        RETURN QUERY SELECT r.status, r.settled_micros, r.shortfall_micros, false, false;
        RETURN;
    END IF;
    SELECT * INTO w FROM wallet_wallet WHERE id = r.wallet_id FOR UPDATE;
    IF r.status = 'held' THEN
        w.reserved_micros := w.reserved_micros - r.amount_micros;
    END IF;
    -- Capped at what the wallet has once this hold is freed; the rest is the shortfall.
    v_charged := LEAST(p_actual, GREATEST(w.balance_micros - w.reserved_micros, 0));
    IF v_charged > 0 THEN
        w.balance_micros := w.balance_micros - v_charged;
        INSERT INTO wallet_ledgerentry (
            wallet_id, organization_id, kind, amount_micros, balance_after_micros, purchase_id,
            request_id, external_ref, actor_id, note, created_at
        ) VALUES (
            w.id, w.organization_id, 'charge', -v_charged, w.balance_micros, NULL,
            r.request_id, '', NULL, '', p_now
        );
    END IF;
    -- The low-balance alert fires once below the threshold and re-arms at or above it.
    IF w.low_balance_threshold_micros IS NOT NULL THEN
        IF w.balance_micros - w.reserved_micros < w.low_balance_threshold_micros THEN
            v_alert := NOT w.low_balance_alerted;
            w.low_balance_alerted := true;
        ELSE
            w.low_balance_alerted := false;
        END IF;
    END IF;
    UPDATE wallet_wallet
       SET balance_micros = w.balance_micros,
           reserved_micros = w.reserved_micros,
           spent_micros = w.spent_micros + v_charged,
           low_balance_alerted = w.low_balance_alerted,
           updated_at = p_now
     WHERE id = w.id;
    UPDATE wallet_reservation
       SET status = 'settled',
           settled_micros = v_charged,
           shortfall_micros = p_actual - v_charged,
           usage = p_usage,
           finished_at = p_now
     WHERE id = r.id;
    RETURN QUERY SELECT 'settled'::varchar, v_charged, p_actual - v_charged, v_alert, true;
END;
$$;
"""

DROP = """
DROP FUNCTION IF EXISTS llmwise_wallet_reserve(bigint, bigint, varchar, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS llmwise_reservation_settle(bigint, bigint, jsonb, timestamptz);
"""


def _on_postgresql(sql: str) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)  # no parameters: "%ROWTYPE" is not a placeholder

    return run


class Migration(migrations.Migration):
    dependencies = [("wallet", "0001_initial")]

    operations = [
        migrations.RunPython(_on_postgresql(RESERVE + SETTLE), _on_postgresql(DROP)),
    ]
