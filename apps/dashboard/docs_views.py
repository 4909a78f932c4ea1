"""Public API documentation: the Quickstart (``/docs/``) and the API reference (``/docs/api/``).

Both are public (no login, no API key) and load nothing from another host: the reference is Redoc
from drf-spectacular-sidecar's static files, reading our own ``/api/schema``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.views import SpectacularRedocView
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts import selectors as account_selectors
from apps.gateway.sdk_examples import QUICKSTART, sdk_example

# What the examples show where the secret goes, when we know no key of the reader's.
KEY_PLACEHOLDER = "lw-…"
# Newest keys first; a reader with more usable keys than this gets the generic placeholder.
KEYS_SCANNED = 20
# Redoc's sidebar footer always shows Redocly's logo from their CDN; the policy stops the browser
# from fetching it (Redoc then hides the image). Redoc needs inline styles, a blob: worker for
# search, and our inline Redoc.init() call.
REFERENCE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)


class ApiReferenceView(SpectacularRedocView):
    """Redoc over ``/api/schema``. Public: the schema describes the API, not anyone's data."""

    url_name = "api_schema"
    template_name = "docs/reference.html"
    title = "API reference · LLMWise"
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Content-Security-Policy"] = REFERENCE_CSP
        return response


api_reference = ApiReferenceView.as_view()


def _key_placeholder(request: HttpRequest) -> str:
    """The visible prefix of the reader's newest usable key (``lw-AbCd…``), so they know which
    secret to paste; the secret itself was shown once and is never stored."""
    if not request.user.is_authenticated:
        return KEY_PLACEHOLDER
    org = getattr(request, "org", None)
    if not org:
        return KEY_PLACEHOLDER
    for key in account_selectors.api_keys_of(org=org)[:KEYS_SCANNED]:
        if key.is_usable:
            return f"{key.prefix}…"
    return KEY_PLACEHOLDER


def quickstart(request: HttpRequest) -> HttpResponse:
    # The examples name this very server, as the reader reached it (scheme and host included).
    base_url = request.build_absolute_uri("/").rstrip("/")
    examples = {name: sdk_example(code, base_url=base_url) for name, code in QUICKSTART.items()}
    return render(
        request,
        "docs/index.html",
        {
            "base_url": base_url,
            "key_placeholder": _key_placeholder(request),
            "examples": examples,
        },
    )
