"""db_restore: restore a db_backup dump into an empty PostgreSQL database, then prove the books
balance there. docs/backup.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Organization
from apps.dashboard.backup import database_restore
from apps.gateway.models import RequestLog
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from apps.wallet.selectors import wallet_audit_problems


class Command(BaseCommand):
    # Only the database settings matter here; the system checks would import every view first.
    requires_system_checks: list[str] = []
    help = (
        "Restore PATH (a db_backup dump) into the database DATABASE_URL names, which must be "
        "empty, in one transaction; then run the wallet audit on it. Exit status 1 on failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="the dump written by db_backup")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        database_restore(path=path)
        counts = {
            "organizations": Organization.objects.count(),
            "wallets": Wallet.objects.count(),
            "ledger entries": LedgerEntry.objects.count(),
            "held reservations": Reservation.objects.filter(status=Reservation.Status.HELD).count(),
            "logged requests": RequestLog.objects.count(),
        }
        self.stdout.write(
            f"Restored {path}: " + ", ".join(f"{n} {label}" for label, n in counts.items()) + "."
        )
        problems = wallet_audit_problems()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"The restored books do not balance: {len(problems)} problem(s).")
        self.stdout.write("wallet_audit: OK, every wallet balances.")
