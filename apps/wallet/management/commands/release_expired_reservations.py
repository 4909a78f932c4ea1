"""release_expired_reservations: free the holds of requests that never settled."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.wallet import services


class Command(BaseCommand):
    help = "Release expired credit reservations (what the every-minute beat task does)."

    def handle(self, *args: Any, **options: Any) -> None:
        released = services.reservations_release_expired()
        self.stdout.write(f"Released {released} expired reservation(s).")
