"""The API's answer when the database is unavailable: 503 in our envelope, not a 500 page.

A PostgreSQL restart or failover breaks the connections in use at that moment, and while the
server is down new connections wait for the pool's timeout and then fail. Whatever view was
running, the client gets the error envelope of its API format with ``Retry-After`` (SDKs retry
503s), and the log gets one warning line, not a traceback per request. Streams that already
started end with the format's own error event instead (the gateway's SSE views).
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse

from llmwise.errors import DATABASE_UNAVAILABLE, application_error_response, service_unavailable
from llmwise.middleware import DualModeMiddleware

logger = logging.getLogger(__name__)

# Paths answered in JSON: the API in each of its formats (the dashboard keeps Django's pages).
API_PREFIXES = ("/api/", "/v1/", "/webhooks/")
ANTHROPIC_PATH = "/v1/messages"


class DatabaseUnavailableMiddleware(DualModeMiddleware):
    """Turns a database outage inside an API view into a 503 in the right envelope."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        if not request.path.startswith(API_PREFIXES):
            return None
        request_id = getattr(request, "request_id", "")
        logger.warning(
            "database unavailable, answering 503 on %s: %s: %s",
            request.path,
            type(exception).__name__,
            str(exception).strip().splitlines()[0] if str(exception).strip() else "",
        )
        error = service_unavailable(exception)
        if request.path.startswith(ANTHROPIC_PATH):
            from apps.gateway.anthropic_api import anthropic_error_response

            return anthropic_error_response(error, request_id=request_id)
        return application_error_response(error, request_id=request_id)
