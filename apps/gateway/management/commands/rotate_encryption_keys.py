"""rotate_encryption_keys: re-encrypt every stored provider key under the newest key.

Rotation: put a new key first in FIELD_ENCRYPTION_KEYS (keep the old ones after it), deploy, run
this command, then remove the old keys. Safe to run again at any time; prints counts, never
secrets. Exits non-zero when a stored key cannot be decrypted with any configured key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.gateway.byok import provider_keys_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored BYOK provider key under the first FIELD_ENCRYPTION_KEYS key. "
        "Idempotent; exit status 1 if some key cannot be decrypted."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = provider_keys_reencrypt()
        self.stdout.write(
            f"Encryption key {report.key_id}: re-encrypted {report.reencrypted}, "
            f"already current {report.current}, changed meanwhile {report.changed}, "
            f"failed {len(report.failed)}."
        )
        if report.failed:
            ids = ", ".join(str(pk) for pk in report.failed)
            raise CommandError(
                f"{len(report.failed)} provider key(s) cannot be decrypted with any configured "
                f"key (ids {ids}): add the key that encrypted them back to "
                "FIELD_ENCRYPTION_KEYS, or ask those organizations to enter their keys again."
            )
