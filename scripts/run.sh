#!/usr/bin/env bash
# README command 1: set up everything and serve LLMWise on http://127.0.0.1:8000.
# Embedded default unless DATABASE_URL / REDIS_URL say otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
mkdir -p var
PY=.venv/bin/python
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
export SITE_URL="${SITE_URL:-http://$HOST:$PORT}"

$PY manage.py migrate --noinput
$PY manage.py seed

cat <<MSG

  LLMWise is starting on $SITE_URL

  1. Open $SITE_URL/accounts/signup/ and sign up.
  2. The verification email is printed right here in this terminal: open its link.
  3. In the dashboard, create an API key (it is shown once), then try:
       curl -H "Authorization: Bearer <key>" $SITE_URL/api/v1/key

  Health: $SITE_URL/healthz   Readiness: $SITE_URL/readyz   Stop: Ctrl-C

MSG
# The same keep-alive as the production image (docker/entrypoint.sh, docs/resilience.md).
exec .venv/bin/uvicorn llmwise.asgi:application --host "$HOST" --port "$PORT" \
  --timeout-keep-alive "${HTTP_KEEP_ALIVE_SECONDS:-75}" --lifespan on --no-access-log
