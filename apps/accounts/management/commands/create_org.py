"""create_org --slug S --owner EMAIL [--name N]: an operator's way to create an organization.

Idempotent: running it again for an existing slug with the same owner changes nothing.
Prints nothing secret (the owner sets a password through "forgot password").
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.accounts import services
from apps.accounts.models import Membership, Organization, Role
from llmwise.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an organization (and its owner user, if missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument("--owner", required=True, help="owner's email address")
        parser.add_argument("--name", default="", help="display name (default: the slug)")

    def handle(self, *args: Any, slug: str, owner: str, name: str, **options: Any) -> None:
        if "@" not in owner:
            raise CommandError(f"--owner must be an email address, got {owner!r}.")
        try:
            with transaction.atomic():
                existing = Organization.objects.filter(slug=slug).first()
                if existing is not None:
                    owns = Membership.objects.filter(
                        organization=existing, user__email__iexact=owner, role=Role.OWNER
                    ).exists()
                    if not owns:
                        raise CommandError(
                            f"Organization {slug!r} exists and {owner} is not its owner."
                        )
                    self.stdout.write(f"Organization {slug} already exists (owner {owner}).")
                    return
                user, created = services.user_get_or_create(email=owner)
                org = services.organization_create(name=name or slug, owner=user, slug=slug)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        who = "new user" if created else "existing user"
        self.stdout.write(f"Created organization {org.slug} owned by {user.email} ({who}).")
