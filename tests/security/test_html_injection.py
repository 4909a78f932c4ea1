"""No HTML injection: markup typed into any user-controlled field is escaped on every page.

Each field gets its own ``<script>`` payload, entered through the real form where one exists
(organization name, key name, invitation email, policy description) and through the services or
the call service's row factory otherwise (a member's email, prompts, completions and model names
in the request log). Then every dashboard page that can show them is fetched: the raw payload
must appear nowhere, and its escaped form must appear on at least one page (so the field really
is rendered and the check means something).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from apps.accounts import services as account_services
from apps.accounts.models import Invitation, Role
from apps.gateway.models import RoutingPolicy
from tests.conftest import Personas
from tests.factories import UserFactory, add_member
from tests.usage_factory import log_row

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


def payload(field: str) -> str:
    return f"<script>alert('{field}')</script><img src=x onerror=\"alert('{field}')\">"


FIELDS = (
    "org_name",
    "key_name",
    "invite_email",
    "member_email",
    "policy_description",
    "prompt",
    "completion",
    "requested_model",
    "error_code",
)


def _email(field: str) -> str:
    # A quoted local part may hold markup and is a valid address (RFC 5321, Django's validator).
    return f'"<script>alert({field})</script>"@acme.test'


def _pages(personas: Personas, request_id: str, policy: RoutingPolicy) -> list[str]:
    return [
        reverse("dashboard:overview"),
        reverse("dashboard:playground"),
        reverse("dashboard:api_keys"),
        reverse("dashboard:usage"),
        reverse("dashboard:usage_request", args=[request_id]),
        reverse("dashboard:team"),
        reverse("dashboard:settings"),
        reverse("dashboard:audit"),
        reverse("dashboard:billing"),
        reverse("dashboard:routing"),
        reverse("dashboard:routing_policies"),
        reverse("dashboard:routing_policy", args=[policy.pk]),
        reverse("dashboard:routing_policy_versions", args=[policy.pk]),
        reverse("dashboard:provider_keys"),
        reverse("dashboard:org_create"),
        reverse("docs"),
    ]


def _fill(personas: Personas, client: Client) -> tuple[str, RoutingPolicy, str]:
    """Enter every payload; returns the request id of the log row and the policy."""
    ok = {200, 302}
    response = client.post(
        reverse("dashboard:settings"), {"name": payload("org_name"), "zero_retention": ""}
    )
    assert response.status_code in ok, response.content
    response = client.post(reverse("dashboard:api_keys"), {"name": payload("key_name")})
    assert response.status_code in ok, response.content
    response = client.post(
        reverse("dashboard:team"), {"email": _email("invite_email"), "role": Role.MEMBER}
    )
    assert response.status_code in ok, response.content
    assert Invitation.objects.filter(email=_email("invite_email")).exists()
    add_member(personas.org, Role.MEMBER, UserFactory(email=_email("member_email")))
    response = client.post(
        reverse("dashboard:routing_policy_create"),
        {
            "name": "injected",
            "description": payload("policy_description"),
            "text": "default:\n  model: gpt-4o-mini\n",
        },
    )
    assert response.status_code == 302, response.content
    policy = RoutingPolicy.objects.get(organization=personas.org, name="injected")
    key = account_services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    log = log_row(
        personas.org,
        api_key=key.api_key,
        requested_model=payload("requested_model"),
        model=payload("requested_model")[:100],
        status="error",
        http_status=404,
        error_type="not_found_error",
        error_code=payload("error_code")[:60],
        prompt=[{"role": "user", "content": payload("prompt")}],
        completion=payload("completion"),
    )
    return log.request_id, policy, key.api_key.prefix


def _body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode()
    return str(response.content.decode())


def test_markup_in_every_field_is_escaped_on_every_page(personas: Personas) -> None:
    client = personas.client(personas.owner)
    request_id, policy, _prefix = _fill(personas, client)
    seen_escaped: set[str] = set()
    pages = _pages(personas, request_id, policy)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        body = _body(response)
        for field in FIELDS:
            raw = payload(field)
            values = [raw, raw[:60], raw[:100], _email(field)]
            for value in values:
                assert value not in body, f"{url} renders {field} unescaped"
                if escape(value) in body:
                    seen_escaped.add(field)
        assert "<script>alert(" not in body, url
        assert 'onerror="alert(' not in body, url
    # Each field is rendered (escaped) on at least one of the pages.
    assert seen_escaped == set(FIELDS), sorted(set(FIELDS) - seen_escaped)


def test_invitation_page_escapes_the_inviting_org_and_person(personas: Personas) -> None:
    client = personas.client(personas.owner)
    client.post(reverse("dashboard:settings"), {"name": payload("org_name"), "zero_retention": ""})
    personas.org.refresh_from_db()
    issued = account_services.invitation_create(
        org=personas.org, actor=personas.owner, email="new@invitee.test"
    )
    invitee = Client()
    invitee.force_login(UserFactory(email="new@invitee.test"))
    response = invitee.get(issued.accept_path)
    assert response.status_code == 200
    body = _body(response)
    assert payload("org_name") not in body
    assert escape(payload("org_name")) in body


def test_api_responses_are_json_never_html(personas: Personas) -> None:
    """What the API echoes back (a model name in a 404) goes out as JSON, never text/html."""
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    response = Client().get(
        reverse("api_request", args=["<img src=x onerror=alert(1)>"]),
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response["X-Content-Type-Options"] == "nosniff"
