"""db_backup: dump the PostgreSQL database to a file (pg_dump, custom format). docs/backup.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.dashboard.backup import database_dump


class Command(BaseCommand):
    # Only the database settings matter here; the system checks would import every view first.
    requires_system_checks: list[str] = []
    help = (
        "Write a consistent, compressed dump of the PostgreSQL database (pg_dump --format=custom) "
        "to PATH. Safe while the app runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="where to write the dump, e.g. backup.dump")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        size = database_dump(path=path)
        self.stdout.write(f"Backup written: {path} ({size} bytes).")
