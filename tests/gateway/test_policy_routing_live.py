"""Routing policies on live calls: which policy applies, what it routes, its limits, its errors.

Policies are written through the policy services (as the dashboard does) and exercised through
``POST /v1/chat/completions`` and ``POST /api/v1/chat`` against the sandbox upstreams.
"""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import Organization, User
from apps.gateway import policy_services
from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.models import CatalogModel, RequestLog, RoutingPolicy
from apps.gateway.pricing import cost_micros, prompt_tokens_estimate, reservation_micros
from apps.gateway.providers.base import ChatMessage, Usage
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from apps.gateway.selectors import catalog_cache_clear
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/v1/chat/completions"
NATIVE_URL = "/api/v1/chat"
FUNDS = 1_000_000
TRANSLATE = "Translate this sentence into German: The meeting has been moved to Thursday."
QUESTION = "Where is Paris?"


@pytest.fixture(autouse=True)
def _routing_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = 30
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()
    health.health_local_clear()
    catalog_cache_clear()


def _policy(
    org: Organization, owner: User, name: str, text: str, *, is_default: bool = False
) -> RoutingPolicy:
    return policy_services.routing_policy_create(
        org=org, actor=owner, name=name, text=text, is_default=is_default
    )


def _key(personas: Personas, name: str = "k", **kwargs: Any) -> tuple[int, str]:
    issued = account_services.api_key_create(
        org=personas.org, name=name, created_by=personas.owner, **kwargs
    )
    return issued.api_key.pk, issued.secret


def _fund(personas: Personas, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="policy tests")
    wallet.refresh_from_db()
    return wallet


def _post(secret: str, body: Any, url: str = URL) -> Any:
    return Client().post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _chat(content: str = QUESTION, model: str = "auto", **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 50,
        **fields,
    }


def _route(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    return dict(response.json()["llmwise"]["route"])


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _nothing_charged(wallet: Wallet, *, held: bool = False) -> None:
    """Balance untouched; no reservation at all (refused before holding), or, with ``held``,
    one that was made and released."""
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert Reservation.objects.count() == (1 if held else 0)
    assert not Reservation.objects.filter(status=Reservation.Status.HELD).exists()
    assert LedgerEntry.objects.count() == 1  # the grant


def test_named_then_pinned_then_org_default(personas: Personas) -> None:
    _fund(personas)
    org, owner = personas.org, personas.owner
    named = _policy(org, owner, "named", "applies_to: all\ndefault:\n  model: gpt-4.1\n")
    pinned = _policy(org, owner, "pinned", "applies_to: all\ndefault:\n  model: gpt-4o\n")
    _policy(
        org, owner, "house", "applies_to: all\ndefault:\n  model: gpt-5-mini\n", is_default=True
    )
    pinned_key_id, pinned_secret = _key(personas, "pinned")
    policy_services.api_key_policy_pin(
        org=org, actor=owner, api_key_id=pinned_key_id, policy_id=pinned.pk
    )
    _, plain_secret = _key(personas, "plain")

    route = _route(_post(pinned_secret, _chat(model="gpt-4o-mini", policy="named")))
    assert route["chosen"] == "gpt-4.1"
    assert route["policy"] == {
        "name": "named",
        "version": named.current_version.number,  # type: ignore[union-attr]
        "rule_index": None,
        "rule": None,
        "source": "request",
    }
    route = _route(_post(pinned_secret, _chat(model="gpt-4o-mini")))
    assert (route["chosen"], route["policy"]["source"]) == ("gpt-4o", "api_key")
    route = _route(_post(plain_secret, _chat(model="gpt-4o-mini")))
    assert (route["chosen"], route["policy"]["source"]) == ("gpt-5-mini", "org_default")
    assert route["requested"] == "gpt-4o-mini"
    assert route["reason"] == "policy 'house': no rule matched; the policy's default"

    log = RequestLog.objects.filter(api_key_id__isnull=False).latest("id")
    assert (log.requested_model, log.model) == ("gpt-4o-mini", "gpt-5-mini")
    assert log.route["policy"]["name"] == "house"
    assert log.category == "qa"
    _audit_ok()


def test_a_matching_rule_routes_the_model_and_its_fallbacks_take_over(
    personas: Personas, faults: FaultControl
) -> None:
    wallet = _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "by-task",
        """\
rules:
  - name: translations
    when: {category: [translation]}
    model: gpt-4o-mini
    fallbacks: [claude-haiku-4.5]
default:
  model: auto
""",
        is_default=True,
    )
    _, secret = _key(personas)
    route = _route(_post(secret, _chat(TRANSLATE)))
    assert route["chosen"] == "gpt-4o-mini"
    assert route["category"] == "translation"
    assert route["chain"] == ["gpt-4o-mini", "claude-haiku-4.5"]
    assert (route["policy"]["rule_index"], route["policy"]["rule"]) == (
        0,
        "by-task.rules[0] (translations)",
    )
    assert route["reason"] == "policy 'by-task': matched by-task.rules[0] (translations)"

    # The rule's fallback answers when its model's provider fails; billed at its prices.
    faults.set(provider="openai", fault="http_500")
    response = _post(secret, _chat(TRANSLATE))
    route = _route(response)
    assert route["chosen"] == "claude-haiku-4.5"
    assert [(a["model"], a["status"]) for a in route["attempts"]] == [
        ("gpt-4o-mini", "error"),
        ("claude-haiku-4.5", "ok"),
    ]
    assert route["reason"].endswith("; answered by a fallback")
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    usage = response.json()["usage"]
    charged = cost_micros(
        model=CatalogModel.objects.get(pk="claude-haiku-4.5"),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
    )
    assert (log.model, log.cost_micros) == ("claude-haiku-4.5", charged)

    # No rule matches a question: the default hands it to the auto-router.
    faults.clear()
    route = _route(_post(secret, _chat(QUESTION)))
    assert route["policy"]["rule_index"] is None
    assert route["tier"] == "budget"
    assert route["reason"].startswith("policy 'by-task': no rule matched; the policy's default")
    assert "; auto: qa, low complexity → budget tier" in route["reason"]
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 0
    _audit_ok()


def test_a_request_naming_a_model_keeps_it_under_an_auto_only_policy(personas: Personas) -> None:
    _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "auto-only",
        "rules:\n  - model: gpt-4.1\ndefault:\n  model: gpt-4.1\n",
        is_default=True,
    )
    _, secret = _key(personas)
    route = _route(_post(secret, _chat(model="gpt-4o-mini", fallbacks=["claude-haiku-4.5"])))
    assert route["chosen"] == "gpt-4o-mini"
    assert route["chain"] == ["gpt-4o-mini", "claude-haiku-4.5"]  # its own fallbacks too
    assert route["policy"]["source"] == "org_default"
    assert route["reason"].startswith("policy 'auto-only': the request names a model")
    # "auto" is what the policy routes.
    assert _route(_post(secret, _chat()))["chosen"] == "gpt-4.1"


def test_price_cap_drops_chain_members_and_refuses_when_none_is_left(
    personas: Personas,
) -> None:
    wallet = _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "capped",
        """\
applies_to: all
default:
  model: gpt-4o
  fallbacks: [gpt-4o-mini]
max_price_per_request_usd: 0.001
""",
        is_default=True,
    )
    _, secret = _key(personas)
    prompt = prompt_tokens_estimate(messages=[ChatMessage("user", QUESTION)])
    dear = reservation_micros(
        model=CatalogModel.objects.get(pk="gpt-4o"), prompt_tokens=prompt, max_tokens=50
    )
    assert dear < 1000  # at 50 tokens gpt-4o fits under $0.001
    route = _route(_post(secret, _chat(model="gpt-4o")))
    assert route["chosen"] == "gpt-4o"

    # 100 output tokens of gpt-4o cost $0.001 alone: dropped, the cheap fallback answers.
    route = _route(_post(secret, _chat(model="gpt-4o", max_tokens=100)))
    assert route["chosen"] == "gpt-4o-mini"
    [excluded] = route["policy"]["excluded"]
    assert excluded["model"] == "gpt-4o"
    assert "over the $0.001 per-request maximum" in excluded["reason"]

    # Nothing under the cap: a clear 400 naming the policy, nothing held or charged.
    wallet_before = RequestLog.objects.count()
    wallet.refresh_from_db()
    balance = wallet.balance_micros
    response = _post(secret, _chat(model="gpt-4o", max_tokens=5000))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("no_model_within_policy", "policy")
    assert "'capped'" in error["message"]
    assert "gpt-4o-mini: may cost up to" in error["message"]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (balance, 0)
    assert RequestLog.objects.count() == wallet_before
    assert not Reservation.objects.filter(status=Reservation.Status.HELD).exists()
    _audit_ok()


def test_allowed_providers_bound_the_auto_router_and_named_models(personas: Personas) -> None:
    wallet = _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "anthropic-only",
        "default:\n  model: auto\nallowed_providers: [anthropic]\n",
        is_default=True,
    )
    _, secret = _key(personas)
    route = _route(_post(secret, _chat()))
    # The cheapest budget model overall is not Anthropic's: only its own models are candidates.
    assert route["chosen"] == "claude-haiku-4.5"
    assert route["tier"] == "budget"
    assert {CatalogModel.objects.get(pk=m).provider for m in route.get("chain", [])} <= {
        "anthropic"
    }

    # A named model keeps its name under an auto-only policy, but not past its limits.
    response = _post(secret, _chat(model="gpt-4o-mini"))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "no_model_within_policy"
    assert "gpt-4o-mini: openai is not an allowed provider" in error["message"]
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 0
    _audit_ok()


def test_unknown_or_foreign_policy_is_404_and_charges_nothing(personas: Personas) -> None:
    wallet = _fund(personas)
    _policy(personas.other_org, personas.outsider, "theirs", "default:\n  model: gpt-4.1\n")
    _, secret = _key(personas)
    for name in ("no-such-policy", "theirs"):
        for url in (URL, NATIVE_URL):
            response = _post(secret, _chat(policy=name), url=url)
            assert response.status_code == 404, response.content
            error = response.json()["error"]
            assert (error["code"], error["param"]) == ("policy_not_found", "policy")
            assert "gpt-4.1" not in response.content.decode()
    _nothing_charged(wallet)
    assert not RequestLog.objects.exists()


def test_a_policy_change_applies_to_the_next_request(personas: Personas) -> None:
    _fund(personas)
    policy = _policy(
        personas.org,
        personas.owner,
        "house",
        "applies_to: all\ndefault:\n  model: gpt-4o\n",
        is_default=True,
    )
    _, secret = _key(personas)
    route = _route(_post(secret, _chat()))
    assert (route["chosen"], route["policy"]["version"]) == ("gpt-4o", 1)
    policy_services.routing_policy_update(
        org=personas.org,
        actor=personas.owner,
        policy_id=policy.pk,
        text="applies_to: all\ndefault:\n  model: gpt-4.1\n",
    )
    route = _route(_post(secret, _chat()))
    assert (route["chosen"], route["policy"]["version"]) == ("gpt-4.1", 2)
    policy_services.routing_policy_set_default(
        org=personas.org, actor=personas.owner, policy_id=None
    )
    route = _route(_post(secret, _chat()))
    assert "policy" not in route
    assert route["tier"] == "budget"


def test_latency_budget_bounds_the_whole_chain(personas: Personas, faults: FaultControl) -> None:
    wallet = _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "snappy",
        """\
applies_to: all
default:
  model: gpt-4o-mini
  fallbacks: [claude-haiku-4.5]
latency_budget_ms: 300
""",
        is_default=True,
    )
    _, secret = _key(personas)
    faults.set(provider="openai", fault="none", latency_ms=3000)
    started = time.monotonic()
    response = _post(secret, _chat())
    assert time.monotonic() - started < 2.5
    assert response.status_code == 504, response.content
    error = response.json()["error"]
    assert error["code"] == "latency_budget_exceeded"
    assert "300 ms" in error["message"]
    _nothing_charged(wallet, held=True)
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert (log.status, log.error_code, log.cost_micros) == ("error", "latency_budget_exceeded", 0)
    assert [(a["model"], a["error_code"]) for a in log.route["attempts"]] == [
        ("gpt-4o-mini", "latency_budget_exceeded")
    ]
    # The budget, not the provider, ended the attempt: no failure counted against it.
    assert health.healthy("openai", "gpt-4o-mini")

    # A fast provider answers within the budget.
    faults.clear()
    assert _route(_post(secret, _chat()))["chosen"] == "gpt-4o-mini"
    _audit_ok()


def test_policy_field_is_validated(personas: Personas) -> None:
    wallet = _fund(personas)
    _, secret = _key(personas)
    for bad in ("", 7, "x" * 61):
        response = _post(secret, _chat(policy=bad))
        assert response.status_code == 400, response.content
        assert response.json()["error"]["param"] == "policy"
    _nothing_charged(wallet)


@pytest.mark.django_db(transaction=True)
def test_fan_out_children_keep_their_models_under_the_org_default(
    personas: Personas, live_gateway: LiveGateway
) -> None:
    _fund(personas)
    _policy(
        personas.org,
        personas.owner,
        "house",
        "applies_to: all\ndefault:\n  model: gpt-4.1\n",
        is_default=True,
    )
    _, secret = _key(personas)
    # A plain call is rerouted by the default policy...
    assert _route(_post(secret, _chat(model="gpt-4o-mini")))["chosen"] == "gpt-4.1"
    # ...but Compare names its models on purpose: its children are not.
    models = ["gpt-4o-mini", "claude-haiku-4.5"]
    response = httpx.post(
        f"{live_gateway.url}/api/v1/compare",
        headers={"Authorization": f"Bearer {secret}"},
        json={"models": models, "messages": [{"role": "user", "content": QUESTION}]},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert [r["model"] for r in response.json()["results"]] == models
    children = RequestLog.objects.exclude(parent_request_id="")
    assert sorted(children.values_list("model", flat=True)) == sorted(models)
    assert all("policy" not in log.route for log in children)
    _audit_ok()
