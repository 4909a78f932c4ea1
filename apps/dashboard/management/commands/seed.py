"""seed: idempotent set-up data every installation needs (the site's domain for email links).

Also creates any missing model of the seeded catalog (rows edited in the admin are left as they
are). Safe to run on every start.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.sites.models import Site
from django.core.management.base import BaseCommand

from apps.gateway.services import catalog_seed


class Command(BaseCommand):
    help = "Create or update the data every installation needs. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        domain = urlsplit(settings.SITE_URL).netloc or "127.0.0.1:8000"
        Site.objects.update_or_create(
            pk=settings.SITE_ID, defaults={"domain": domain, "name": "LLMWise"}
        )
        models = catalog_seed()
        self.stdout.write(f"Seeded: site {domain}, {models} catalog models.")
