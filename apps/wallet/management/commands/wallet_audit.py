"""wallet_audit: prove the books balance. Exits non-zero on any mismatch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.wallet import selectors
from apps.wallet.models import Wallet


class Command(BaseCommand):
    help = (
        "Check every wallet: ledger sum == balance, reserved == held reservations, nothing "
        "negative, no orphan reservations or charges. Exit status 1 on any problem."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor == "postgresql":
            # Fresh planner statistics first: the audit joins reservations to the ledger, and
            # on tables that grew faster than autovacuum's last ANALYZE (a busy day, a restored
            # dump) the planner picks a nested loop that is quadratic in the ledger's size.
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE wallet_wallet, wallet_reservation, wallet_ledgerentry")
        problems = selectors.wallet_audit_problems()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"wallet_audit found {len(problems)} problem(s).")
        self.stdout.write(f"OK: {Wallet.objects.count()} wallet(s) balance.")
