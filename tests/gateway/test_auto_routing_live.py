"""``model: "auto"`` on live calls: classify → choose → walk the chain, explained and logged.

Through HTTP (the OpenAI-compatible, native and Anthropic endpoints) against the sandbox
upstreams; the catalog is the seeded one, so "the cheapest budget model" is computed from it here
rather than hard-coded.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey
from apps.gateway import byok
from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from apps.gateway.selectors import catalog_cache_clear
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

OPENAI_URL = "/v1/chat/completions"
NATIVE_URL = "/api/v1/chat"
ANTHROPIC_URL = "/v1/messages"
FUNDS = 1_000_000

CLASSIFY = (
    "Classify the sentiment of this review as positive or negative: "
    "'The battery died after two days.'"
)
HARD_MATH = (
    "Prove that there are infinitely many primes p such that p ≡ 3 (mod 4). Then derive a bound "
    "on the n-th such prime, show each step of the argument, and verify it numerically for "
    "n = 1..10."
)
HARD_CODE = (
    "Write a lock-free multi-producer multi-consumer queue in C++ using atomics, explain the "
    "memory ordering of every operation, prove it is linearizable, and add a stress test that "
    "runs 8 threads."
)


@pytest.fixture(autouse=True)
def _routing_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = 30
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()  # Redis is flushed per test by the cache fixture (same database)
    health.health_local_clear()
    catalog_cache_clear()  # the catalog was re-seeded: no models cached from an earlier test


def _key(personas: Personas, **kwargs: Any) -> str:
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, **kwargs
    ).secret


def _fund(personas: Personas, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="auto tests")
    wallet.refresh_from_db()
    return wallet


def _post(secret: str, body: Any, url: str = OPENAI_URL) -> Any:
    return Client().post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _auto(content: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 50,
        **fields,
    }


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _tier_by_price(tier: str) -> list[str]:
    """The enabled models of ``tier``, cheapest first (the auto-router's order, without BYOK)."""
    models = CatalogModel.objects.filter(enabled=True, tier=tier)
    ranked = sorted(
        models,
        key=lambda m: (m.input_price_micros_per_mtok + m.output_price_micros_per_mtok, m.id),
    )
    return [m.id for m in ranked]


def _cost(body: dict[str, Any], model_id: str) -> int:
    usage = body["usage"]
    return cost_micros(
        model=CatalogModel.objects.get(pk=model_id),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
    )


def test_auto_sends_a_classification_prompt_to_the_cheapest_budget_model(
    personas: Personas,
) -> None:
    wallet = _fund(personas)
    response = _post(_key(personas), _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    body = response.json()
    route = body["llmwise"]["route"]
    budget = _tier_by_price("budget")
    assert body["model"] == route["chosen"] == budget[0]
    assert CatalogModel.objects.get(pk=body["model"]).tier == "budget"
    assert response["x-llmwise-model"] == budget[0]
    assert route["requested"] == "auto"
    assert (route["category"], route["complexity"], route["tier"]) == (
        "classification",
        "low",
        "budget",
    )
    assert route["reason"] == "classification, low complexity → budget tier: cheapest healthy model"
    assert "kw:sentiment" in route["signals"]
    # The chain is the choice and its same-tier alternatives, capped by the mesh's limit.
    assert route["chain"] == budget[:5]
    assert [(a["model"], a["status"]) for a in route["attempts"]] == [(budget[0], "ok")]

    charged = _cost(body, budget[0])
    assert body["llmwise"]["cost_micros"] == charged
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - charged, 0)
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert (log.requested_model, log.model, log.category) == ("auto", budget[0], "classification")
    assert log.route["reason"] == route["reason"]
    assert log.route["tier"] == "budget"
    assert log.route["signals"] == route["signals"]  # a retaining key keeps the cue names
    _audit_ok()


@pytest.mark.parametrize(
    ("prompt", "category"), [(HARD_MATH, "math_reasoning"), (HARD_CODE, "code")]
)
def test_auto_sends_hard_work_to_a_frontier_model(
    personas: Personas, prompt: str, category: str
) -> None:
    _fund(personas)
    response = _post(_key(personas), _auto(prompt), url=NATIVE_URL)
    assert response.status_code == 200, response.content
    body = response.json()
    route = body["route"]
    frontier = _tier_by_price("frontier")
    assert body["model"] == route["chosen"] == frontier[0]
    assert CatalogModel.objects.get(pk=body["model"]).tier == "frontier"
    assert (route["category"], route["complexity"], route["tier"]) == (category, "high", "frontier")
    assert route["reason"].startswith(f"{category}, high complexity → frontier tier")
    log = RequestLog.objects.get(request_id=body["id"])
    assert (log.category, log.model, log.endpoint) == (category, frontier[0], "native.chat")
    assert log.cost_micros == body["cost"]["micros"] > 0


def test_auto_respects_the_keys_allowed_models(personas: Personas) -> None:
    _fund(personas)
    allowed = ["claude-haiku-4.5", "gpt-4o-mini", "gpt-4o"]
    secret = _key(personas, allowed_models=allowed)
    response = _post(secret, _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    route = response.json()["llmwise"]["route"]
    # The cheapest *allowed* budget model; the chain holds only allowed budget models.
    assert route["chosen"] == "gpt-4o-mini"
    assert route["chain"] == ["gpt-4o-mini", "claude-haiku-4.5"]

    # A key allowed only frontier models still gets an answer: the next tier up.
    secret = _key(personas, allowed_models=["claude-sonnet-4.5"])
    response = _post(secret, _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    route = response.json()["llmwise"]["route"]
    assert (route["chosen"], route["tier"]) == ("claude-sonnet-4.5", "frontier")
    assert "budget tier (none viable)" in route["reason"]


def test_auto_prefers_the_providers_the_org_brought_its_own_key_for(personas: Personas) -> None:
    wallet = _fund(personas)
    byok.provider_key_set(
        org=personas.org,
        actor=personas.owner,
        provider="anthropic",
        secret="sk-ant-byok-canary-4b1d9e2f7a6c3e58",
    )
    response = _post(_key(personas), _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    body = response.json()
    route = body["llmwise"]["route"]
    # claude-haiku-4.5 is the dearest budget model, but the org pays its provider itself.
    assert route["chosen"] == "claude-haiku-4.5"
    assert route["reason"].endswith("cheapest healthy model with your own key")
    assert (body["llmwise"]["byok"], body["llmwise"]["charged_micros"]) == (True, 0)
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)

    # Removing the key is seen at once by this process: back to the cheapest budget model.
    byok.provider_key_delete(org=personas.org, actor=personas.owner, provider="anthropic")
    response = _post(_key(personas), _auto(CLASSIFY))
    assert response.json()["llmwise"]["route"]["chosen"] == _tier_by_price("budget")[0]
    _audit_ok()


def test_auto_fails_over_along_its_chain_when_the_first_provider_fails(
    personas: Personas, faults: FaultControl
) -> None:
    wallet = _fund(personas)
    budget = _tier_by_price("budget")
    first = CatalogModel.objects.get(pk=budget[0])
    faults.set(provider=first.provider, fault="http_500")
    response = _post(_key(personas), _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    body = response.json()
    route = body["llmwise"]["route"]
    answered = next(m for m in budget if CatalogModel.objects.get(pk=m).provider != first.provider)
    assert body["model"] == route["chosen"] == answered
    assert route["attempts"][0] == {
        "model": first.id,
        "provider": first.provider,
        "status": "error",
        "error_code": "upstream_server_error",
        "latency_ms": route["attempts"][0]["latency_ms"],
    }
    assert route["attempts"][-1]["model"] == answered
    assert route["attempts"][-1]["status"] == "ok"
    assert route["reason"].endswith("; answered by a fallback")
    assert route["category"] == "classification"
    # Billed once, for the model that answered, at its prices.
    charged = _cost(body, answered)
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - charged, 0)
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert (log.model, log.cost_micros, log.category) == (answered, charged, "classification")
    assert [a["status"] for a in log.route["attempts"]] == [a["status"] for a in route["attempts"]]
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_auto_on_the_native_stream_explains_the_route_in_done(
    personas: Personas, live_gateway: LiveGateway
) -> None:
    _fund(personas)
    response = httpx.post(
        live_gateway.url + NATIVE_URL,
        headers={"Authorization": f"Bearer {_key(personas)}"},
        json=_auto(CLASSIFY, stream=True),
        timeout=10,
    )
    assert response.status_code == 200
    events = [
        (block.split("\n")[0], json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in response.text.strip().split("\n\n")
    ]
    assert events[-1][0] == "event: done"
    done = events[-1][1]
    assert done["route"]["requested"] == "auto"
    assert done["route"]["category"] == "classification"
    assert done["route"]["tier"] == "budget"
    assert response.headers["x-llmwise-model"] == done["model"] == _tier_by_price("budget")[0]
    log = wait_for_log(done["id"])
    assert (log.stream, log.category, log.requested_model) == (True, "classification", "auto")
    assert log.route["tier"] == "budget"
    _audit_ok()


def test_auto_on_the_anthropic_endpoint(personas: Personas) -> None:
    _fund(personas)
    body = {"model": "auto", "max_tokens": 50, "messages": [{"role": "user", "content": CLASSIFY}]}
    response = Client().post(
        ANTHROPIC_URL, body, content_type="application/json", HTTP_X_API_KEY=_key(personas)
    )
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["model"] == _tier_by_price("budget")[0]
    assert answer["llmwise"]["route"]["category"] == "classification"


def test_named_models_are_classified_too(personas: Personas) -> None:
    _fund(personas)
    response = _post(
        _key(personas),
        {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": HARD_CODE}]},
    )
    assert response.status_code == 200, response.content
    route = response.json()["llmwise"]["route"]
    # The named model is kept; the labels are there for the optimizer, nothing else.
    assert (route["chosen"], route["reason"]) == ("gpt-4o", "requested")
    assert (route["category"], route["complexity"]) == ("code", "high")
    assert "tier" not in route
    assert "signals" not in route
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert log.category == "code"


def test_zero_retention_keeps_labels_but_no_text_derived_signals(personas: Personas) -> None:
    _fund(personas)
    secret = _key(personas, zero_retention=True)
    assert not ApiKey.objects.get(name="k").retains_text
    response = _post(secret, _auto(CLASSIFY))
    assert response.status_code == 200, response.content
    route = response.json()["llmwise"]["route"]
    assert "kw:sentiment" in route["signals"]  # the caller sent the text: it may see them
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert (log.category, log.route["complexity"], log.route["tier"]) == (
        "classification",
        "low",
        "budget",
    )
    assert "signals" not in log.route
    assert log.prompt is None
    assert log.completion == ""
    assert "sentiment" not in json.dumps(log.route)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (_auto(CLASSIFY, fallbacks=["gpt-4o"]), 400, "invalid_request", "fallbacks"),
        (_auto(CLASSIFY, max_tokens=10_000_000), 400, "context_length_exceeded", "messages"),
    ],
)
def test_bad_auto_requests_are_refused_and_charge_nothing(
    personas: Personas, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    wallet = _fund(personas)
    response = _post(_key(personas), body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert not Reservation.objects.exists()
    assert LedgerEntry.objects.count() == 1  # the grant
    assert not RequestLog.objects.exists()


def test_auto_without_credit_is_402_and_calls_nothing(personas: Personas) -> None:
    response = _post(_key(personas), _auto(CLASSIFY))
    assert response.status_code == 402, response.content
    assert not RequestLog.objects.exists()
    assert not Reservation.objects.exists()
