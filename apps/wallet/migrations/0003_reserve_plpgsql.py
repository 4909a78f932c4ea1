"""``llmwise_wallet_reserve`` in PL/pgSQL: the same statement and rules, with a cached plan.

A ``LANGUAGE sql`` function returning a set is planned again on every call; PL/pgSQL keeps a
statement's plan for the life of the database session. Measured on one connection, calls
interleaved: 0.67 ms per reserve before, 0.37 ms after. Reverting restores the SQL version.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

SIGNATURE = """
CREATE OR REPLACE FUNCTION llmwise_wallet_reserve(
    p_org bigint, p_amount bigint, p_request_id varchar, p_now timestamptz, p_expires timestamptz
) RETURNS TABLE (out_reservation bigint, out_wallet bigint)
"""

# One conditional UPDATE holds the credit (concurrent holds queue on the row lock and each
# re-checks the condition); the INSERT only runs when it held. A repeated request id makes the
# INSERT fail on reservation_unique, which rolls the hold back with the statement.
STATEMENT = """
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
"""

# Inside PL/pgSQL the output columns are variables too: qualify nothing by those names.
PLPGSQL = (
    SIGNATURE + "LANGUAGE plpgsql AS $$\nBEGIN\n    RETURN QUERY" + STATEMENT + ";\nEND;\n$$;\n"
)
SQL = SIGNATURE + "LANGUAGE sql AS $$" + STATEMENT + "$$;\n"


def _on_postgresql(sql: str) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("wallet", "0002_hot_path_functions")]

    operations = [migrations.RunPython(_on_postgresql(PLPGSQL), _on_postgresql(SQL))]
