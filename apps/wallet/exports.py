"""The ledger as CSV rows: the Billing page's download and the organization's data export
(``apps.dashboard.exports``) write the same columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from llmwise.csv_export import csv_safe

from .models import LedgerEntry, format_usd


def ledger_csv_rows(entries: Iterable[LedgerEntry]) -> Iterator[list[str]]:
    """The header, then one row per entry (amounts exact, notes formula-safe)."""
    yield [
        "created_at",
        "kind",
        "amount_usd",
        "amount_micros",
        "balance_after_usd",
        "request_id",
        "purchase",
        "note",
    ]
    for entry in entries:
        yield [
            entry.created_at.isoformat(),
            entry.kind,
            entry.amount_usd,
            str(entry.amount_micros),
            format_usd(entry.balance_after_micros),
            csv_safe(entry.request_id),
            entry.purchase.public_id if entry.purchase else "",
            csv_safe(entry.note),
        ]
