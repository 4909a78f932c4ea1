"""``manage.py rollups_update [--rebuild [--org SLUG]]``: run the usage rollup job now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Organization
from apps.gateway.rollups import DEFAULT_BATCH_SIZE, rollups_rebuild, rollups_update


class Command(BaseCommand):
    help = (
        "Fold new request-log rows into the usage rollups (what the periodic task does). "
        "--rebuild recomputes them from the raw log, for one organization (--org) or all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rebuild", action="store_true", help="Recompute from the raw log instead."
        )
        parser.add_argument("--org", metavar="SLUG", help="Only this organization (--rebuild).")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be positive.")
        slug: str | None = options["org"]
        if slug and not options["rebuild"]:
            raise CommandError("--org only applies with --rebuild.")
        if options["rebuild"]:
            org = None
            if slug:
                org = Organization.objects.filter(slug=slug).first()
                if org is None:
                    raise CommandError(f"No organization with slug {slug!r}.")
            processed = rollups_rebuild(org=org, batch_size=batch_size)
            scope = f"organization {slug}" if slug else "all organizations"
            self.stdout.write(f"Rebuilt the usage rollups of {scope}: {processed} log rows.")
            return
        processed = rollups_update(batch_size=batch_size)
        self.stdout.write(f"Folded {processed} new log rows into the usage rollups.")
