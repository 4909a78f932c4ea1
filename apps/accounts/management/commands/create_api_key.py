"""create_api_key --org S --name N: create a key and print its secret as the last line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts import services
from apps.accounts.models import Organization
from llmwise.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API key for an organization; the secret is the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True, help="a name for the key")

    def handle(self, *args: Any, org: str, name: str, **options: Any) -> None:
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        try:
            issued = services.api_key_create(org=organization, name=name, created_by=None)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Created key {issued.api_key.prefix}… for {organization.slug}. "
            "The secret below is shown only once."
        )
        self.stdout.write(issued.secret)
