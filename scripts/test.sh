#!/usr/bin/env bash
# README command 2: set up, lint, type-check and run the whole test suite in parallel.
# With DATABASE_URL / REDIS_URL set (as .ci/run does) the tests run on PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy .
echo "==> dependency audit (pip-audit; skipped with a message when the advisory service is unreachable)"
.venv/bin/python scripts/dependency_audit.py
echo "==> pytest"
# --dist loadgroup: tests marked xdist_group("postgres_connections") (many threads, one
# connection each) run on one worker, so two of them never exhaust PostgreSQL's connections.
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-auto}" --dist loadgroup "$@"
