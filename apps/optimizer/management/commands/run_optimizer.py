"""``manage.py run_optimizer --org SLUG``: run the optimizer job for one organization now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Organization
from apps.optimizer.services import optimizer_run


class Command(BaseCommand):
    help = (
        "Aggregate one organization's request history and refresh its recommendations "
        "(the same job the daily schedule runs), synchronously."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", metavar="SLUG", required=True, help="The organization.")

    def handle(self, *args: Any, **options: Any) -> None:
        slug: str = options["org"]
        org = Organization.objects.filter(slug=slug).first()
        if org is None:
            raise CommandError(f"No organization with slug {slug!r}.")
        run = optimizer_run(org=org, trigger="command")
        self.stdout.write(
            f"Optimizer run {run.pk} for {slug}: {run.rows_scanned} log rows in "
            f"{run.duration_ms} ms; recommendations {run.created} new, {run.updated} updated, "
            f"{run.superseded} superseded."
        )
