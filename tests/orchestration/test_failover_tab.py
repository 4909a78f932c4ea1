"""The playground's Failover tab and its sandbox switch (``dashboard:playground_sandbox_provider``).

The switch drives the real sandbox upstream's control API over HTTP; what it did is checked on
the sandbox itself (its fault rules) and by a real chat call through the gateway that fails over.
Outside sandbox mode the URL is a 404 for everyone, whatever the method, login or role.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from apps.accounts import services as account_services
from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl

from .conftest import fund, messages

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

PLAYGROUND = "dashboard:playground"
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _url(provider: str = "openai") -> str:
    return reverse("dashboard:playground_sandbox_provider", args=[provider])


@pytest.fixture(autouse=True)
def _fresh_health(faults: FaultControl) -> Iterator[None]:
    """No fault rule and no breaker state leaks into or out of these tests."""
    yield
    faults.clear()
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()  # Redis is flushed per test by the cache fixture (same database)
    health.health_local_clear()


@pytest.fixture
def production(settings: Any) -> None:
    """Real providers: no sandbox anywhere."""
    settings.PROVIDER_SANDBOX = False
    settings.PROVIDER_SANDBOX_KEYLESS = False
    settings.PROVIDER_SANDBOX_URL = ""


def _post(client: Client, action: str, provider: str = "openai") -> Any:
    return client.post(_url(provider), {"action": action}, HTTP_ACCEPT="application/json")


# --- outside sandbox mode: nothing there ------------------------------------------------------
@pytest.mark.usefixtures("production")
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_outside_sandbox_mode_the_switch_is_a_404_for_everyone(
    personas: Personas, method: str
) -> None:
    for client in (Client(), personas.client(personas.owner), personas.client(personas.member)):
        response = getattr(client, method)(_url(), {"action": "break"})
        assert response.status_code == 404, (method, response.status_code)


@pytest.mark.usefixtures("production")
def test_outside_sandbox_mode_the_failover_tab_has_no_sandbox_panel(personas: Personas) -> None:
    response = personas.client(personas.owner).get(reverse(PLAYGROUND) + "?tab=failover")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="tab-failover"' in html
    assert "Sandbox providers" not in html
    assert "Break openai" not in html


def test_a_provider_with_a_real_key_is_not_breakable_in_keyless_mode(
    personas: Personas, settings: Any, faults: FaultControl
) -> None:
    # The embedded default: only providers without a platform key are on the sandbox.
    settings.PROVIDER_SANDBOX = False
    settings.PROVIDER_SANDBOX_KEYLESS = True
    settings.PROVIDER_KEYS = {**settings.PROVIDER_KEYS, "openai": "sk-real-looking"}
    owner = personas.client(personas.owner)
    assert _post(owner, "break", "openai").status_code == 404
    assert faults.list() == []
    response = _post(owner, "break", "anthropic")
    assert response.status_code == 200, response.content
    assert {"provider": "anthropic", "broken": True} in response.json()["providers"]
    assert "openai" not in {p["provider"] for p in response.json()["providers"]}


# --- sandbox mode -----------------------------------------------------------------------------
def test_the_failover_tab_lists_the_chain_and_the_switches_for_admins(personas: Personas) -> None:
    html = personas.client(personas.admin).get(reverse(PLAYGROUND) + "?tab=failover")
    text = html.content.decode()
    assert re.search(r'id="tab-failover"[^>]*aria-selected="true"', text)
    assert 'aria-labelledby="tab-failover"' in text
    assert 'id="failover-primary"' in text
    assert 'id="failover-fallback-1"' in text
    for provider in ("openai", "anthropic", "gemini"):
        assert f"Break {provider}" in text
    # A member sees the panel (what is broken) but no switch.
    member = personas.client(personas.member).get(reverse(PLAYGROUND) + "?tab=failover")
    assert "Sandbox providers" in member.content.decode()
    assert "Break openai" not in member.content.decode()


def test_an_admin_breaks_a_provider_calls_fail_over_then_restores_it(
    personas: Personas, faults: FaultControl
) -> None:
    admin = personas.client(personas.admin)
    response = _post(admin, "break")
    assert response.status_code == 200, response.content
    states = {p["provider"]: p["broken"] for p in response.json()["providers"]}
    assert states["openai"] is True
    assert states["anthropic"] is False
    assert faults.list() == [
        {
            "provider": "openai",
            "model": None,
            "fault": "http_503",
            "remaining": None,
            "latency_ms": None,
            "chunk_delay_ms": None,
            "retry_after": None,
        }
    ]
    page = admin.get(reverse(PLAYGROUND) + "?tab=failover").content.decode()
    assert re.search(r'data-provider="openai" data-broken="true"', page)

    # A real call through the gateway (a chain, as the tab sends it) moves on to the fallback.
    fund(personas)
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    call = Client().post(
        "/api/v1/chat",
        {"model": "gpt-4o-mini", "fallbacks": ["claude-haiku-4.5"], "messages": messages()},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert call.status_code == 200, call.content
    body = call.json()
    assert body["model"] == "claude-haiku-4.5"
    assert [(a["model"], a["status"]) for a in body["route"]["attempts"]] == [
        ("gpt-4o-mini", "error"),
        ("claude-haiku-4.5", "ok"),
    ]

    restored = _post(admin, "restore")
    assert restored.status_code == 200, restored.content
    assert {p["provider"]: p["broken"] for p in restored.json()["providers"]}["openai"] is False
    assert faults.list() == []


def test_a_member_may_not_break_a_provider(personas: Personas, faults: FaultControl) -> None:
    response = _post(personas.client(personas.member), "break")
    assert response.status_code == 403
    assert faults.list() == []


def test_an_anonymous_visitor_is_sent_to_log_in(faults: FaultControl) -> None:
    response = _post(Client(), "break")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
    assert faults.list() == []


def test_the_switch_needs_post(personas: Personas, faults: FaultControl) -> None:
    response = personas.client(personas.owner).get(_url(), {"action": "break"})
    assert response.status_code == 405
    assert faults.list() == []


def test_the_switch_needs_the_csrf_token(personas: Personas, faults: FaultControl) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    refused = _post(client, "break")
    assert refused.status_code == 403
    assert faults.list() == []

    # The token the playground page renders (the script sends it as X-CSRFToken) is accepted.
    page = client.get(reverse(PLAYGROUND)).content.decode()
    match = CSRF_INPUT.search(page)
    assert match
    accepted = client.post(
        _url(), {"action": "break"}, HTTP_X_CSRFTOKEN=match.group(1), HTTP_ACCEPT="application/json"
    )
    assert accepted.status_code == 200, accepted.content
    assert [rule["provider"] for rule in faults.list()] == ["openai"]


def test_bad_action_and_unknown_provider_change_nothing(
    personas: Personas, faults: FaultControl
) -> None:
    owner = personas.client(personas.owner)
    response = _post(owner, "explode")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "action")
    assert "break, restore" in error["message"]
    assert error["request_id"] == response["x-request-id"]
    assert _post(owner, "break", "no-such-provider").status_code == 404
    assert faults.list() == []


def test_an_unreachable_sandbox_is_a_502_in_the_envelope(
    personas: Personas, settings: Any, sandbox: SandboxServer
) -> None:
    # Nothing listens on port 9 (discard) of the loopback in the test environment.
    settings.PROVIDER_SANDBOX_URL = "http://127.0.0.1:9"
    response = _post(personas.client(personas.owner), "break")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "sandbox_unreachable"
    # The page still renders, with every provider shown as working.
    page = personas.client(personas.owner).get(reverse(PLAYGROUND) + "?tab=failover")
    assert page.status_code == 200
    assert 'data-broken="true"' not in page.content.decode()
