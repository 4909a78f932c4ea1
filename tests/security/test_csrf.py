"""CSRF: every state change made with a browser session needs the token.

The sweep POSTs without a token to every URL of the project (but the admin, Django's own, and
the API) as the logged-in owner, with real object ids of their organization, and expects 403 each
time. The API and the Stripe webhook are CSRF-exempt by design; the second half proves that is
safe: a browser session alone does not authenticate them.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.accounts.models import ApiKey
from tests.conftest import Personas
from tests.security.conftest import OrgAData
from tests.security.test_tenancy_sweep import URLS, all_routes

pytestmark = pytest.mark.django_db

# Authenticated by an API key (or Stripe's signature), never by the session cookie.
CSRF_EXEMPT = {
    "native_chat",
    "api_key_info",
    "api_wallet",
    "api_health_providers",
    "api_requests",
    "api_request",
    "api_routing_dry_run",
    "api_compare",
    "api_blend",
    "api_judge",
    "api_orchestration",
    "api_recommendations",
    "anthropic_messages",
    "openai_chat_completions",
    "openai_models",
    "stripe_webhook",
}

# allauth's Google One Tap endpoint is csrf_exempt and checks Google's own double-submit token
# (g_csrf_token cookie == body) instead: 403 without it, 404 while Google sign-in is not set up.
# The schema and its Redoc page are DRF views (csrf_exempt like every APIView) that only read:
# a POST is refused as a method, 405.
OWN_CSRF_CHECK = {"google_login_by_token": {403, 404}, "api_schema": {405}, "docs_api": {405}}


def test_the_exempt_set_is_exactly_the_api() -> None:
    api_kinds = {name for name, spec in URLS.items() if spec.kind.startswith("api_")}
    assert api_kinds | {"stripe_webhook"} == CSRF_EXEMPT


def test_every_browser_post_without_a_token_is_refused(personas: Personas, org_a: OrgAData) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    refused = []
    for route in all_routes():
        if route.route.startswith("admin/") or route.key in CSRF_EXEMPT:
            continue
        spec = URLS[route.key]
        url = reverse(route.name, kwargs=spec.kwargs(org_a)) if route.name else "/" + route.route
        response = client.post(url, spec.data(org_a))
        assert response.status_code in OWN_CSRF_CHECK.get(route.key, {403}), (
            route.key,
            response.status_code,
        )
        refused.append(route.key)
    # The owner is still logged in and nothing was revoked: the refusals changed nothing.
    assert ApiKey.objects.get(pk=org_a.api_key.pk).revoked_at is None
    assert len(refused) == len(URLS) - len(CSRF_EXEMPT)


def test_admin_posts_need_the_token_too(personas: Personas) -> None:
    personas.owner.is_staff = True
    personas.owner.is_superuser = True
    personas.owner.save()
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    response = client.post(reverse("admin:accounts_organization_add"), {"name": "x"})
    assert response.status_code == 403


def test_with_the_token_the_same_post_goes_through(personas: Personas, org_a: OrgAData) -> None:
    """The control: the 403s above come from the missing token, not from the request itself."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    page = client.get(reverse("dashboard:api_keys"))
    token = page.cookies["csrftoken"].value
    response = client.post(
        reverse("dashboard:api_key_revoke", args=[org_a.api_key.pk]),
        {"csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=org_a.api_key.pk).revoked_at is not None


@pytest.mark.parametrize("name", sorted(CSRF_EXEMPT - {"stripe_webhook"}))
def test_a_session_alone_never_authenticates_the_api(
    personas: Personas, org_a: OrgAData, name: str
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    spec = URLS[name]
    url = reverse(name, kwargs=spec.kwargs(org_a))
    for method in spec.methods:
        if method == "GET":
            response = client.get(url)
        else:
            response = client.post(url, {}, content_type="application/json")
        if response.status_code == 405:
            continue
        assert response.status_code == 401, (name, method, response.status_code)
        assert response.json()["error"]["type"] == "authentication_error"


def test_the_stripe_webhook_needs_its_signature(db: None) -> None:
    response = Client(enforce_csrf_checks=True).post(
        reverse("stripe_webhook"), b"{}", content_type="application/json"
    )
    assert response.status_code == 400
