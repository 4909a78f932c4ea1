"""grant_credits --org S --usd AMOUNT --note TEXT: an operator's audited adjustment."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Organization
from apps.wallet import services
from apps.wallet.models import MICROS_PER_USD, format_usd
from llmwise.errors import ApplicationError

MAX_GRANT_USD = Decimal(100_000)


def parse_usd(value: str) -> int:
    """'12.5' → 12_500_000 micro-USD; refuses non-numbers, zero, sub-micro and huge amounts."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise CommandError(f"--usd must be a number of US dollars, got {value!r}.") from None
    if not amount.is_finite():
        raise CommandError(f"--usd must be a finite number, got {value!r}.")
    if not amount:
        raise CommandError("--usd must not be zero.")
    if abs(amount) > MAX_GRANT_USD:
        raise CommandError(f"--usd is limited to ±{MAX_GRANT_USD} per grant.")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise CommandError("--usd has at most 6 decimal places (micro-dollars).")
    return int(micros)


class Command(BaseCommand):
    help = "Add (or, with a negative amount, take back) credit: an audited ledger adjustment."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--usd", required=True, help="amount in USD, e.g. 25 or -3.50")
        parser.add_argument("--note", required=True, help="why (kept in the ledger and audit log)")

    def handle(self, *args: Any, org: str, usd: str, note: str, **options: Any) -> None:
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        amount = parse_usd(usd)
        wallet = services.wallet_for_org(org=organization)
        try:
            entry = services.wallet_grant(wallet=wallet, amount_micros=amount, note=note)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Granted {format_usd(amount)} USD to {organization.slug} (ledger entry {entry.pk}); "
            f"available now {format_usd(wallet.available_micros)} USD."
        )
