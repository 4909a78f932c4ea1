"""The optional per-organization response cache: off by default, exact match, never across
organizations or for zero retention, a hit calls no provider and is charged the org's fee through
the wallet; and its settings form on the dashboard's Routing page.

Through HTTP against the sandbox upstream, whose call counter shows whether a provider was asked.
"""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import AuditEvent, Organization, User
from apps.gateway.models import OrgGatewaySettings, RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.gateway.selectors import catalog_cache_clear
from apps.gateway.services import org_gateway_settings_update
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Wallet
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/v1/chat/completions"
NATIVE_URL = "/api/v1/chat"
ROUTING_PAGE = "/dashboard/routing/"
FUNDS = 1_000_000
FEE = 150


@pytest.fixture(autouse=True)
def _on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    catalog_cache_clear()


def _calls(sandbox: SandboxServer) -> int:
    return int(sandbox.app.chat_calls)


def _enable(org: Organization, owner: User, *, ttl: int = 300, fee: int = FEE) -> None:
    org_gateway_settings_update(
        org=org, actor=owner, cache_enabled=True, cache_ttl_seconds=ttl, cache_fee_micros=fee
    )


def _key(org: Organization, owner: User, **kwargs: Any) -> str:
    return account_services.api_key_create(org=org, name="k", created_by=owner, **kwargs).secret


def _fund(org: Organization) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="cache tests")
    wallet.refresh_from_db()
    return wallet


def _post(secret: str, body: Any, url: str = URL) -> Any:
    return Client().post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _chat(content: str = "What is the capital of France?", **fields: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 50,
        **fields,
    }


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def test_off_by_default(personas: Personas, sandbox: SandboxServer) -> None:
    _fund(personas.org)
    secret = _key(personas.org, personas.owner)
    before = _calls(sandbox)
    for _ in range(2):
        response = _post(secret, _chat())
        assert response.status_code == 200, response.content
        assert "x-llmwise-cache" not in response
    assert _calls(sandbox) == before + 2
    assert not RequestLog.objects.filter(cache_hit=True).exists()


def test_a_repeat_is_answered_from_the_cache_and_charged_the_fee(
    personas: Personas, sandbox: SandboxServer
) -> None:
    wallet = _fund(personas.org)
    _enable(personas.org, personas.owner)
    secret = _key(personas.org, personas.owner)
    before = _calls(sandbox)

    first = _post(secret, _chat())
    assert first.status_code == 200, first.content
    assert first["x-llmwise-cache"] == "miss"
    first_cost = int(first["x-llmwise-cost-micros"])
    assert _calls(sandbox) == before + 1

    second = _post(secret, _chat())
    assert second.status_code == 200, second.content
    assert second["x-llmwise-cache"] == "hit"
    assert _calls(sandbox) == before + 1  # no provider call
    body = second.json()
    assert (
        body["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    assert body["usage"] == first.json()["usage"]  # the usage of the text it returns
    assert second["x-llmwise-cost-micros"] == str(FEE)
    route = body["llmwise"]["route"]
    assert (route["cache"], route["chosen"], route["attempts"]) == ("hit", "gpt-4o-mini", [])
    assert route["reason"] == "answered from the response cache"
    assert body["llmwise"]["charged_micros"] == FEE

    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - first_cost - FEE, 0)
    log = RequestLog.objects.get(request_id=second["x-request-id"])
    assert (log.cache_hit, log.cost_micros, log.prompt_tokens, log.completion_tokens) == (
        True,
        FEE,
        0,
        0,
    )
    assert log.category == "qa"
    assert not RequestLog.objects.get(request_id=first["x-request-id"]).cache_hit

    # The native format hits the same entry (the request is the same); another parameter or
    # another message is another request.
    native = _post(secret, _chat(), url=NATIVE_URL)
    assert native["x-llmwise-cache"] == "hit"
    assert native.json()["route"]["attempts"] == []
    assert _post(secret, _chat(temperature=0.3))["x-llmwise-cache"] == "miss"
    assert _post(secret, _chat("And of Spain?"))["x-llmwise-cache"] == "miss"
    assert _calls(sandbox) == before + 3
    _audit_ok()


def test_free_hits_move_no_money(personas: Personas, sandbox: SandboxServer) -> None:
    _fund(personas.org)
    _enable(personas.org, personas.owner, fee=0)
    secret = _key(personas.org, personas.owner)
    _post(secret, _chat())
    entries = LedgerEntry.objects.count()
    response = _post(secret, _chat())
    assert response["x-llmwise-cache"] == "hit"
    assert response["x-llmwise-cost-micros"] == "0"
    assert LedgerEntry.objects.count() == entries
    _audit_ok()


def test_never_across_organizations(personas: Personas, sandbox: SandboxServer) -> None:
    _fund(personas.org)
    _fund(personas.other_org)
    _enable(personas.org, personas.owner)
    _enable(personas.other_org, personas.outsider)
    ours = _key(personas.org, personas.owner)
    theirs = _key(personas.other_org, personas.outsider)
    assert _post(ours, _chat())["x-llmwise-cache"] == "miss"
    before = _calls(sandbox)
    response = _post(theirs, _chat())
    assert response["x-llmwise-cache"] == "miss"
    assert _calls(sandbox) == before + 1


def test_never_for_zero_retention_or_streams(personas: Personas, sandbox: SandboxServer) -> None:
    _fund(personas.org)
    _enable(personas.org, personas.owner)
    zero = _key(personas.org, personas.owner, zero_retention=True)
    before = _calls(sandbox)
    for _ in range(2):
        response = _post(zero, _chat())
        assert response.status_code == 200, response.content
        assert "x-llmwise-cache" not in response
    assert _calls(sandbox) == before + 2

    personas.org.zero_retention = True
    personas.org.save(update_fields=["zero_retention"])
    # The key says "store", but the organization's zero retention rules the cache out.
    storing = _key(personas.org, personas.owner, zero_retention=False)
    for _ in range(2):
        assert "x-llmwise-cache" not in _post(storing, _chat())
    assert _calls(sandbox) == before + 4
    assert not RequestLog.objects.filter(cache_hit=True).exists()


def test_entries_expire_after_the_ttl(personas: Personas, sandbox: SandboxServer) -> None:
    _fund(personas.org)
    _enable(personas.org, personas.owner, ttl=1)
    secret = _key(personas.org, personas.owner)
    assert _post(secret, _chat())["x-llmwise-cache"] == "miss"
    assert _post(secret, _chat())["x-llmwise-cache"] == "hit"
    time.sleep(1.2)
    assert _post(secret, _chat())["x-llmwise-cache"] == "miss"


def test_a_hit_without_credit_for_the_fee_is_402(
    personas: Personas, sandbox: SandboxServer
) -> None:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=2_000, note="a little")
    _enable(personas.org, personas.owner, fee=2_000)
    secret = _key(personas.org, personas.owner)
    first = _post(secret, _chat())
    assert first.status_code == 200, first.content
    response = _post(secret, _chat())
    assert response.status_code == 402, response.content
    assert response.json()["error"]["code"] == "insufficient_credit"
    assert RequestLog.objects.count() == 1
    _audit_ok()


# --- the settings form --------------------------------------------------------------------------
def _form(enabled: bool = True, ttl: int = 600, fee: int = 250) -> dict[str, Any]:
    data: dict[str, Any] = {"cache_ttl_seconds": ttl, "cache_fee_micros": fee}
    if enabled:
        data["cache_enabled"] = "on"
    return data


def test_admin_turns_the_cache_on_from_the_routing_page(personas: Personas) -> None:
    client = personas.client(personas.admin)
    page = client.get(ROUTING_PAGE)
    assert page.status_code == 200
    assert b"Response cache" in page.content
    response = client.post(ROUTING_PAGE, _form())
    assert response.status_code == 302
    row = OrgGatewaySettings.objects.get(organization=personas.org)
    assert (row.cache_enabled, row.cache_ttl_seconds, row.cache_fee_micros) == (True, 600, 250)
    [event] = AuditEvent.objects.filter(organization=personas.org, action="gateway_settings.update")
    assert event.actor == personas.admin
    assert event.data["to"]["cache_enabled"] is True
    # Saving the same values again records nothing.
    client.post(ROUTING_PAGE, _form())
    assert AuditEvent.objects.filter(action="gateway_settings.update").count() == 1


def test_bad_values_are_refused(personas: Personas) -> None:
    client = personas.client(personas.owner)
    for data in (_form(ttl=0), _form(fee=-1), _form(ttl=10**9), {"cache_enabled": "on"}):
        response = client.post(ROUTING_PAGE, data)
        assert response.status_code == 400
    assert not OrgGatewaySettings.objects.exists()


def test_members_see_but_cannot_change_and_outsiders_change_only_their_own(
    personas: Personas,
) -> None:
    member = personas.client(personas.member)
    page = member.get(ROUTING_PAGE)
    assert page.status_code == 200
    assert b"Owners and admins change these settings" in page.content
    assert member.post(ROUTING_PAGE, _form()).status_code == 403
    assert not OrgGatewaySettings.objects.exists()

    outsider = personas.client(personas.outsider)
    assert outsider.post(ROUTING_PAGE, _form()).status_code == 302
    assert OrgGatewaySettings.objects.get().organization == personas.other_org
