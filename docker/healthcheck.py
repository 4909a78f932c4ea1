"""Container health check: exit 0 when the local web process answers ``GET /healthz`` with 200.

The image's HEALTHCHECK runs this (python:3.11-slim has no curl). It sends what a reverse proxy
would: a Host header taken from ALLOWED_HOSTS, so Django's host validation accepts it, and
``X-Forwarded-Proto: https``, so SECURE_SSL_REDIRECT does not answer with a redirect.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from typing import Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect means the probe was misrouted: report it instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def host_header(allowed_hosts: str) -> str:
    """The first concrete entry of a comma-separated ALLOWED_HOSTS, else ``localhost``."""
    for entry in allowed_hosts.split(","):
        host = entry.strip().lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def healthy(port: int, host: str, timeout: float = 3.0) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/healthz",
        headers={"Host": host, "X-Forwarded-Proto": "https"},
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    port = int(os.environ.get("PORT") or 8000)
    host = host_header(os.environ.get("ALLOWED_HOSTS", ""))
    return 0 if healthy(port, host) else 1


if __name__ == "__main__":
    sys.exit(main())
