#!/usr/bin/env bash
# Entry point of the LLMWise image: the first argument picks the role.
#   web      ASGI server (HTTP + WebSockets); does not migrate, the `migrate` role does
#   worker   Celery worker
#   beat     Celery beat (periodic jobs); run exactly one
#   migrate  apply migrations, then seed the data every installation needs (idempotent)
#   manage   any manage.py command, e.g. `manage createsuperuser`
#   anything else is run as given, e.g. `bash`
# Works in the image (/app) and from a checkout: it runs from the directory above its own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

role="${1:-web}"
if [ "$#" -gt 0 ]; then
  shift
fi

case "$role" in
  web)
    # The server's worker processes count their metrics in files of one directory, added up by
    # GET /metrics (prometheus_client's multiprocess mode, docs/operations.md); it starts empty.
    if [ -z "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
      PROMETHEUS_MULTIPROC_DIR="$(mktemp -d -t llmwise-metrics.XXXXXX)"
    else
      mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
      find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -type f -name '*.db' -delete
    fi
    export PROMETHEUS_MULTIPROC_DIR
    # --proxy-headers trusts X-Forwarded-* from any address: run behind a reverse proxy.
    # Idle keep-alive connections stay open longer than clients and load balancers keep theirs
    # (docs/resilience.md): whoever closes an idle connection first must be the client, or a
    # request sent as the server closes it is reset.
    exec uvicorn llmwise.asgi:application --host 0.0.0.0 --port "${PORT:-8000}" \
      --proxy-headers --forwarded-allow-ips='*' --workers "${WEB_CONCURRENCY:-2}" \
      --timeout-keep-alive "${HTTP_KEEP_ALIVE_SECONDS:-75}" --lifespan on "$@"
    ;;
  worker)
    exec celery -A llmwise worker --loglevel=info --concurrency "${CELERY_CONCURRENCY:-2}" "$@"
    ;;
  beat)
    exec celery -A llmwise beat --loglevel=info --schedule var/run/celerybeat-schedule "$@"
    ;;
  migrate)
    python manage.py migrate --noinput
    exec python manage.py seed
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
