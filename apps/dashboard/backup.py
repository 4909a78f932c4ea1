"""PostgreSQL backup and restore with the standard tools (``pg_dump`` / ``pg_restore``), pointed
at the database the settings name. Used by ``manage.py db_backup`` and ``manage.py db_restore``;
the procedure around them is in ``docs/backup.md``.

The connection goes to the tools through libpq's environment variables (``PGHOST``…), taken from
``DATABASES["default"]``: the same database the app uses, whatever shape ``DATABASE_URL`` had,
and the password never appears on a command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError
from django.db import connections

DUMP_FORMAT = "custom"  # compressed, restorable selectively and in parallel by pg_restore


def _require_postgresql(alias: str) -> dict[str, Any]:
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise CommandError(
            "This needs PostgreSQL (DATABASE_URL=postgres://…). The embedded SQLite default is "
            "backed up by copying its file while the app is stopped, or online with "
            "sqlite3's .backup command (docs/backup.md)."
        )
    return dict(connection.settings_dict)


def tool(name: str) -> str:
    """The path of PostgreSQL tool ``name`` (``PG_BIN_DIR`` first, then ``PATH``)."""
    directory = os.environ.get("PG_BIN_DIR", "")
    found = shutil.which(name, path=directory or None)
    if found is None:
        raise CommandError(
            f"{name} was not found; install PostgreSQL's client tools (the same major version "
            "as the server, or newer) or set PG_BIN_DIR."
        )
    return found


def libpq_environment(settings_dict: dict[str, Any]) -> dict[str, str]:
    """The process environment plus libpq's connection variables for ``settings_dict``."""
    env = dict(os.environ)
    values = {
        "PGHOST": settings_dict.get("HOST"),
        "PGPORT": settings_dict.get("PORT"),
        "PGUSER": settings_dict.get("USER"),
        "PGPASSWORD": settings_dict.get("PASSWORD"),
        "PGDATABASE": settings_dict.get("NAME"),
    }
    for name, value in values.items():
        if value:
            env[name] = str(value)
        else:
            env.pop(name, None)
    return env


def _run(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - fixed tool, arguments are ours
        arguments, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise CommandError(
            f"{Path(arguments[0]).name} failed (exit {result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def database_dump(*, path: Path, alias: str = "default") -> int:
    """Write a consistent snapshot of the database to ``path``; returns its size in bytes.

    ``pg_dump`` reads inside one repeatable-read transaction, so the app may keep running: the
    dump is the database as of one instant (every ledger entry with the wallet row it changed).
    Owners and grants are left out so the dump restores under any role.
    """
    settings_dict = _require_postgresql(alias)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            tool("pg_dump"),
            f"--format={DUMP_FORMAT}",
            "--no-owner",
            "--no-privileges",
            f"--file={path}",
        ],
        libpq_environment(settings_dict),
    )
    # A dump pg_restore cannot read is no backup: list its table of contents now.
    _run([tool("pg_restore"), "--list", str(path)], libpq_environment(settings_dict))
    return path.stat().st_size


def database_restore(*, path: Path, alias: str = "default") -> None:
    """Restore the dump at ``path`` into the (empty) database of the settings, all or nothing."""
    settings_dict = _require_postgresql(alias)
    if not path.is_file():
        raise CommandError(f"No dump at {path}.")
    tables = connections[alias].introspection.table_names()
    if tables:
        raise CommandError(
            f"Database {settings_dict['NAME']!r} is not empty ({len(tables)} tables). Restore "
            "into a new, empty database (createdb), check it, then switch DATABASE_URL to it."
        )
    connections[alias].close()  # pg_restore works alone; our idle connection would only wait
    _run(
        [
            tool("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={settings_dict['NAME']}",
            str(path),
        ],
        libpq_environment(settings_dict),
    )
