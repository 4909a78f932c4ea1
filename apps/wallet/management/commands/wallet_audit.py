"""wallet_audit: prove the books balance. Exits non-zero on any mismatch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.wallet import selectors
from apps.wallet.models import Wallet


class Command(BaseCommand):
    help = (
        "Check every wallet: ledger sum == balance, reserved == held reservations, nothing "
        "negative, no orphan reservations or charges. Exit status 1 on any problem."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        problems = selectors.wallet_audit_problems()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"wallet_audit found {len(problems)} problem(s).")
        self.stdout.write(f"OK: {Wallet.objects.count()} wallet(s) balance.")
