"""An organization's data export: one ZIP with its request log and its ledger as CSV.

The archive is built while it is sent (:func:`llmwise.csv_export.csv_zip_stream`): rows come from
the database in chunks, so a log of millions of rows never sits in memory. The CSV columns are
those of the Usage and Billing downloads (``apps.gateway.exports``, ``apps.wallet.exports``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from apps.accounts.models import Organization
from apps.gateway import selectors as gateway_selectors
from apps.gateway.exports import request_log_csv_rows
from apps.wallet import selectors as wallet_selectors
from apps.wallet.exports import ledger_csv_rows
from llmwise.csv_export import csv_zip_stream

EXPORT_CHUNK_ROWS = 500
REQUESTS_FILE = "requests.csv"
LEDGER_FILE = "ledger.csv"
MANIFEST_FILE = "manifest.json"


def export_filename(*, org: Organization, generated_at: datetime) -> str:
    return f"llmwise-export-{org.slug}-{generated_at:%Y%m%d-%H%M%S}.zip"


def organization_export_stream(*, org: Organization, generated_at: datetime) -> Iterator[bytes]:
    """The ZIP's bytes, piece by piece: ``manifest.json``, ``requests.csv`` (every logged
    request, newest first, texts included unless never stored) and ``ledger.csv`` (every entry,
    newest first)."""
    manifest = {
        "organization": {"id": org.pk, "name": org.name, "slug": org.slug},
        "generated_at": generated_at.isoformat(),
        "files": {
            REQUESTS_FILE: "the request log: metadata, cost, and the texts unless never stored",
            LEDGER_FILE: "the ledger: every grant, purchase, charge, refund and adjustment",
        },
        "amounts": "micro-USD integers (1 USD = 1000000) and exact USD strings",
    }
    logs = gateway_selectors.request_logs_of(org=org)
    entries = wallet_selectors.ledger_entries_of(org=org)
    return csv_zip_stream(
        [
            (REQUESTS_FILE, request_log_csv_rows(logs.iterator(chunk_size=EXPORT_CHUNK_ROWS))),
            (LEDGER_FILE, ledger_csv_rows(entries.iterator(chunk_size=EXPORT_CHUNK_ROWS))),
        ],
        extra=[(MANIFEST_FILE, json.dumps(manifest, indent=2).encode())],
    )
