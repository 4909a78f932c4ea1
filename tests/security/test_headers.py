"""Hardened responses: Content-Security-Policy, framing, referrer, sniffing; templates that work
under the policy (no inline scripts, handlers or styles)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import reverse

from llmwise.csp import ContentSecurityPolicyMiddleware
from tests.conftest import Personas

pytestmark = pytest.mark.django_db

TEMPLATES = Path(settings.BASE_DIR) / "templates"
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)


def _directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


@pytest.mark.parametrize(
    "url", ["/", "/docs/", "/accounts/login/", "/dashboard/", "/dashboard/keys/"]
)
def test_pages_carry_the_policy_and_the_framing_and_referrer_headers(
    personas: Personas, url: str
) -> None:
    client = personas.client(personas.owner) if url.startswith("/dashboard/") else Client()
    response = client.get(url)
    assert response.status_code == 200
    policy = _directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_api_errors_carry_them_too(db: None) -> None:
    response = Client().get("/v1/models")
    assert response.status_code == 401
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def test_the_api_reference_keeps_its_own_policy(db: None) -> None:
    response = Client().get(reverse("docs_api"))
    assert response.status_code == 200
    policy = _directives(response["Content-Security-Policy"])
    assert "blob:" in policy["worker-src"]  # Redoc's search worker: the page's own policy
    assert response.headers.get("Content-Security-Policy", "").count("default-src") == 1


def test_the_policy_middleware_runs_natively_in_async_stacks() -> None:
    """django-csp's own middleware would cost two thread hops per async request."""

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    middleware = ContentSecurityPolicyMiddleware(view)
    assert asyncio.iscoroutinefunction(middleware)
    response = asyncio.run(middleware(HttpRequest()))
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_htmx_is_configured_without_eval(db: None) -> None:
    body = Client().get("/").content.decode()
    config = re.search(r'<meta name="htmx-config" content=\'([^\']*)\'', body)
    assert config is not None
    assert '"allowEval": false' in config.group(1)
    assert '"includeIndicatorStyles": false' in config.group(1)


def _templates() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.html"))


def test_no_template_has_inline_handlers_scripts_or_styles() -> None:
    """What the policy would block: on*= handlers, inline <script> code, <style> blocks.

    The Redoc page (docs/reference.html) is the one exception: it sets its own policy.
    """
    problems = []
    for path in _templates():
        name = str(path.relative_to(TEMPLATES))
        if name == "docs/reference.html":
            continue
        text = path.read_text()
        if INLINE_HANDLER.search(re.sub(r"\{[{%#].*?[%}#]\}", "", text)):
            problems.append(f"{name}: inline event handler")
        if "<style" in text:
            problems.append(f"{name}: inline <style>")
        if " style=" in text:
            problems.append(f"{name}: style attribute")
        for attrs in SCRIPT_TAG.findall(text):
            if "src=" not in attrs and 'type="application/json"' not in attrs:
                problems.append(f"{name}: inline <script{attrs}>")
    assert problems == []
