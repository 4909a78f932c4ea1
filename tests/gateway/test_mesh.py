"""Mesh failover through HTTP: chains, breakers, cooldowns, money, streams.

Faults come from the sandbox upstream (control API per provider, or prompt markers that hit every
provider of a chain). Windows and cool-downs are shortened by settings; every test runs on the
configured counters backend (Redis with REDIS_URL, in-process memory without).
"""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/v1/chat/completions"
NATIVE_URL = "/api/v1/chat"
PRIMARY = "gpt-4o-mini"  # openai, budget tier
SECOND = "claude-haiku-4.5"  # anthropic, budget tier
THIRD = "gemini-2.5-flash-lite"  # gemini, budget tier
OPENROUTER = "meta-llama/llama-3.3-70b-instruct"
GROQ = "llama-3.3-70b"
FUNDS = 1_000_000
COOLDOWN = 1.0  # seconds, for the breaker in the tests that wait for a probe (default 10)


@pytest.fixture(autouse=True)
def _mesh_settings(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    # Long enough that no breaker half-opens during a test, unless the test shortens it.
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = 30
    settings.GATEWAY_MESH_STATE_CACHE_SECONDS = 0.2
    settings.GATEWAY_MESH_RATE_LIMIT_COOLDOWN_SECONDS = 0.2
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()  # Redis is flushed per test by the cache fixture (same database)
    health.health_local_clear()


def _key(personas: Personas, **kwargs: Any) -> str:
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, **kwargs
    ).secret


def _fund(personas: Personas, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="mesh tests")
    wallet.refresh_from_db()
    return wallet


def _post(secret: str, body: Any, url: str = URL) -> Any:
    return Client().post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _chat(content: str = "Where is Paris?", **fields: Any) -> dict[str, Any]:
    return {
        "model": PRIMARY,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 50,
        **fields,
    }


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _statuses(route: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["model"], a["status"], a["error_code"]) for a in route["attempts"]]


def _charged(body: dict[str, Any]) -> int:
    usage = body["usage"]
    model = CatalogModel.objects.get(pk=body["model"])
    return cost_micros(model=model, usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]))


def test_a_failing_provider_is_failed_over_then_skipped(
    personas: Personas, faults: FaultControl
) -> None:
    wallet = _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="http_500")
    charged = 0
    routes = []
    for _ in range(8):
        response = _post(secret, _chat(fallbacks=[SECOND, THIRD]))
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["model"] == SECOND
        assert response["x-llmwise-model"] == SECOND
        routes.append(body["llmwise"]["route"])
        charged += _charged(body)
        assert body["llmwise"]["cost_micros"] == _charged(body)  # the answering model's prices
    failed_over = [(PRIMARY, "error", "upstream_server_error"), (SECOND, "ok", "")]
    skipped = [(PRIMARY, "skipped", "circuit_open"), (SECOND, "ok", "")]
    # Five failures in the window (100% errors ≥ 50%, ≥ 5 calls) open the breaker: from then on
    # the failing model is skipped without a call.
    assert [_statuses(r) for r in routes] == [failed_over] * 5 + [skipped] * 3
    assert routes[0]["chain"] == [PRIMARY, SECOND, THIRD]
    assert routes[0]["reason"] == "fallback"
    assert all(a["latency_ms"] >= 0 for r in routes for a in r["attempts"])

    # One reservation per request, settled once for what the answering model used.
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - charged, 0)
    assert Reservation.objects.filter(status=Reservation.Status.SETTLED).count() == 8
    logs = list(RequestLog.objects.order_by("created_at"))
    assert [(log.model, log.provider, log.status) for log in logs] == [
        (SECOND, "anthropic", "ok")
    ] * 8
    assert _statuses(logs[0].route) == failed_over
    assert _statuses(logs[-1].route) == skipped
    _audit_ok()

    [openai] = [
        row for row in health.catalog_health(allowed_models=[PRIMARY]) if row.model == PRIMARY
    ]
    assert openai.state == health.BreakerState.OPEN
    assert (openai.calls, openai.errors, openai.error_rate) == (5, 5, 1.0)
    assert openai.last_failure_code == "upstream_server_error"
    assert not health.healthy("openai", PRIMARY)
    assert health.healthy("anthropic", SECOND)


def test_traffic_returns_after_the_half_open_probe(
    personas: Personas, faults: FaultControl, settings: Any
) -> None:
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="http_503")
    for _ in range(5):
        assert _post(secret, _chat(fallbacks=[SECOND])).json()["model"] == SECOND
    skipped = _post(secret, _chat(fallbacks=[SECOND])).json()["llmwise"]["route"]
    assert _statuses(skipped)[0] == (PRIMARY, "skipped", "circuit_open")

    faults.clear()  # the provider is back…
    time.sleep(COOLDOWN + 0.1)  # …and the cool-down is over: half-open, one probe decides
    probe = _post(secret, _chat(fallbacks=[SECOND])).json()
    assert probe["model"] == PRIMARY
    assert _statuses(probe["llmwise"]["route"]) == [(PRIMARY, "ok", "")]
    assert probe["llmwise"]["route"]["reason"] == "requested"
    for _ in range(3):
        assert _post(secret, _chat(fallbacks=[SECOND])).json()["model"] == PRIMARY
    assert health.healthy("openai", PRIMARY)
    [row] = [r for r in health.catalog_health() if r.model == PRIMARY]
    assert row.state == health.BreakerState.CLOSED
    # The failures that opened it are still in the display window, but a fresh failure does not
    # re-open it: the breaker's own window was emptied when the probe closed it.
    assert row.errors == 5
    faults.set(provider="openai", fault="http_500", count=1)
    route = _post(secret, _chat(fallbacks=[SECOND])).json()["llmwise"]["route"]
    assert _statuses(route)[0] == (PRIMARY, "error", "upstream_server_error")
    assert _post(secret, _chat(fallbacks=[SECOND])).json()["model"] == PRIMARY


def test_a_failed_probe_reopens_the_breaker(
    personas: Personas, faults: FaultControl, settings: Any
) -> None:
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="http_500")
    for _ in range(5):
        _post(secret, _chat(fallbacks=[SECOND]))
    time.sleep(COOLDOWN + 0.1)
    probe = _post(secret, _chat(fallbacks=[SECOND])).json()["llmwise"]["route"]
    assert _statuses(probe) == [(PRIMARY, "error", "upstream_server_error"), (SECOND, "ok", "")]
    after = _post(secret, _chat(fallbacks=[SECOND])).json()["llmwise"]["route"]
    assert _statuses(after)[0] == (PRIMARY, "skipped", "circuit_open")


def test_openrouter_429_burst_cools_it_down_then_it_recovers(
    personas: Personas, faults: FaultControl, settings: Any
) -> None:
    _fund(personas)
    secret = _key(personas)
    # Retry-After (2 s) is longer than the configured cooldown (0.2 s): it wins.
    faults.set(provider="openrouter", fault="http_429", retry_after=2)
    body = _chat(model=OPENROUTER, fallbacks=[GROQ])
    for _ in range(3):
        route = _post(secret, body).json()["llmwise"]["route"]
        assert _statuses(route) == [
            (OPENROUTER, "error", "upstream_rate_limited"),
            (GROQ, "ok", ""),
        ]
    started = time.monotonic()
    faults.clear()
    cooled = _post(secret, body).json()["llmwise"]["route"]
    assert _statuses(cooled) == [(OPENROUTER, "skipped", "provider_cooldown"), (GROQ, "ok", "")]
    assert not health.healthy("openrouter", OPENROUTER)
    [row] = health.catalog_health(allowed_models=[OPENROUTER])
    assert row.cooldown_until is not None
    assert row.state == health.BreakerState.CLOSED  # 3 calls: below the breaker's minimum
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    still = _post(secret, body).json()["llmwise"]["route"]
    assert _statuses(still)[0] == (OPENROUTER, "skipped", "provider_cooldown")
    time.sleep(max(0.0, 2.1 - (time.monotonic() - started)))
    back = _post(secret, body).json()
    assert back["model"] == OPENROUTER
    assert _statuses(back["llmwise"]["route"]) == [(OPENROUTER, "ok", "")]


def test_all_providers_down_is_one_503_and_nothing_is_charged(
    personas: Personas, sandbox: SandboxServer
) -> None:
    wallet = _fund(personas)
    before = sandbox.app.chat_calls
    response = _post(_key(personas), _chat("hi [[sandbox:http_500]]", fallbacks=[SECOND, THIRD]))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "all_providers_failed"
    assert error["type"] == "upstream_error"
    assert error["request_id"] == response["x-request-id"]
    for model in (PRIMARY, SECOND, THIRD):
        assert model in error["message"]
    assert sandbox.app.chat_calls == before + 3
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    log = RequestLog.objects.get()
    assert (log.status, log.http_status, log.cost_micros, log.error_code) == (
        "error",
        503,
        0,
        "all_providers_failed",
    )
    assert _statuses(log.route) == [
        (PRIMARY, "error", "upstream_server_error"),
        (SECOND, "error", "upstream_server_error"),
        (THIRD, "error", "upstream_server_error"),
    ]
    assert log.route["chosen"] is None
    _audit_ok()


def test_every_breaker_open_still_tries_the_least_recently_failed(
    personas: Personas, faults: FaultControl, settings: Any
) -> None:
    _fund(personas)
    secret = _key(personas)
    faults.set(provider="*", fault="http_500")
    for _ in range(5):
        _post(secret, _chat(model=SECOND))  # SECOND fails first…
    for _ in range(5):
        _post(secret, _chat())  # …then PRIMARY
    assert not health.healthy("anthropic", SECOND)
    assert not health.healthy("openai", PRIMARY)
    faults.clear()
    response = _post(secret, _chat(fallbacks=[SECOND]))
    assert response.status_code == 200, response.content
    route = response.json()["llmwise"]["route"]
    assert _statuses(route) == [
        (PRIMARY, "skipped", "circuit_open"),
        (SECOND, "skipped", "circuit_open"),
        (SECOND, "ok", ""),
    ]
    # The forced call succeeded: evidence enough to close that breaker.
    assert health.healthy("anthropic", SECOND)


def test_a_lone_model_answers_its_own_provider_error(personas: Personas) -> None:
    _fund(personas)
    response = _post(_key(personas), _chat("hello [[sandbox:http_429]]"))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert int(response["Retry-After"]) >= 1


def test_a_non_retryable_error_returns_at_once(personas: Personas, sandbox: SandboxServer) -> None:
    wallet = _fund(personas)
    before = sandbox.app.chat_calls
    response = _post(
        _key(personas), _chat("hi [[sandbox:content_policy]]", fallbacks=[SECOND, THIRD])
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert sandbox.app.chat_calls == before + 1  # the fallbacks were never called
    log = RequestLog.objects.get()
    assert _statuses(log.route) == [(PRIMARY, "error", "content_policy_violation")]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    # A refused request is not the provider's failure: the breaker does not count it.
    [row] = health.catalog_health(allowed_models=[PRIMARY])
    assert (row.calls, row.errors) == (1, 0)
    _audit_ok()


@pytest.mark.parametrize(
    ("fallbacks", "status", "code", "param"),
    [
        (["claude-nope"], 404, "model_not_found", "fallbacks.0"),
        ([SECOND, "nope-2"], 404, "model_not_found", "fallbacks.1"),
        ([SECOND, THIRD, GROQ, OPENROUTER, "gpt-4o"], 400, "invalid_request", "fallbacks"),
        ("claude-haiku-4.5", 400, "invalid_request", "fallbacks"),
        ([SECOND, 3], 400, "invalid_request", "fallbacks"),
    ],
)
def test_bad_chains_are_refused_before_anything_is_held(
    personas: Personas,
    sandbox: SandboxServer,
    fallbacks: Any,
    status: int,
    code: str,
    param: str,
) -> None:
    wallet = _fund(personas)
    before = sandbox.app.chat_calls
    response = _post(_key(personas), _chat(fallbacks=fallbacks))
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    if status == 404:
        assert fallbacks[-1] in error["message"]
    assert sandbox.app.chat_calls == before
    assert not Reservation.objects.exists()
    wallet.refresh_from_db()
    assert wallet.balance_micros == FUNDS


def test_a_fallback_the_key_may_not_use_is_403(personas: Personas) -> None:
    _fund(personas)
    secret = _key(personas, allowed_models=[PRIMARY])
    response = _post(secret, _chat(fallbacks=[SECOND]))
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "fallbacks.0"


def test_the_hold_covers_the_costliest_model_of_the_chain(
    personas: Personas, sandbox: SandboxServer
) -> None:
    # Enough for the primary's worst case, not for the fallback's: 402, nothing sent upstream.
    _fund(personas, 100)
    before = sandbox.app.chat_calls
    secret = _key(personas)
    assert _post(secret, _chat()).status_code == 200
    response = _post(secret, _chat(fallbacks=["claude-opus-4.1"]))
    assert response.status_code == 402
    assert sandbox.app.chat_calls == before + 1


def test_mesh_true_fails_over_to_same_tier_models_of_other_providers(
    personas: Personas, faults: FaultControl
) -> None:
    _fund(personas)
    faults.set(provider="openai", fault="http_500")
    response = _post(_key(personas), _chat(mesh=True))
    assert response.status_code == 200, response.content
    body = response.json()
    route = body["llmwise"]["route"]
    chain = route["chain"]
    assert chain[0] == PRIMARY
    tiers = dict(CatalogModel.objects.filter(pk__in=chain).values_list("id", "tier"))
    providers = dict(CatalogModel.objects.filter(pk__in=chain).values_list("id", "provider"))
    assert set(tiers.values()) == {"budget"}
    assert "openai" not in {providers[m] for m in chain[1:]}
    assert len(chain) <= 5
    assert body["model"] == chain[1]
    assert _statuses(route)[0] == (PRIMARY, "error", "upstream_server_error")


def test_mesh_default_chain_from_settings(
    personas: Personas, faults: FaultControl, settings: Any
) -> None:
    _fund(personas)
    settings.GATEWAY_MESH_DEFAULT_CHAINS = {"budget": [THIRD, SECOND]}
    faults.set(provider="openai", fault="http_500")
    route = _post(_key(personas), _chat(mesh=True)).json()["llmwise"]["route"]
    assert route["chain"] == [PRIMARY, THIRD, SECOND]
    assert _statuses(route)[-1] == (THIRD, "ok", "")


def test_native_api_takes_fallbacks_and_shows_the_attempts(
    personas: Personas, faults: FaultControl
) -> None:
    _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="overloaded_529")
    response = _post(secret, _chat(fallbacks=[SECOND]), url=NATIVE_URL)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == SECOND
    assert body["route"]["reason"] == "fallback"
    assert _statuses(body["route"]) == [
        (PRIMARY, "error", "upstream_overloaded"),
        (SECOND, "ok", ""),
    ]
    # The request-log API shows the same route.
    logged = Client().get(f"/api/v1/requests/{body['id']}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert logged.status_code == 200
    assert logged.json()["route"]["attempts"] == body["route"]["attempts"]
    bad = _post(secret, _chat(mesh="yes"), url=NATIVE_URL)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "mesh")


# --- streams ----------------------------------------------------------------------------------


def _sse(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.django_db(transaction=True)
def test_a_stream_fails_over_before_its_first_token(
    personas: Personas, faults: FaultControl, live_gateway: LiveGateway
) -> None:
    wallet = _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="http_503")
    body = _chat(stream=True, stream_options={"include_usage": True}, fallbacks=[SECOND])
    with httpx.stream(
        "POST",
        live_gateway.url + URL,
        json=body,
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-llmwise-model"] == SECOND
        events = _sse(response)
    chunks = [e for e in events if isinstance(e, dict)]
    assert {c["model"] for c in chunks} == {SECOND}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert f"Sandbox answer from {CatalogModel.objects.get(pk=SECOND).upstream_name}" in text
    assert events[-1] == "[DONE]"
    llmwise = chunks[-1]["llmwise"]
    assert _statuses(llmwise["route"]) == [
        (PRIMARY, "error", "upstream_overloaded"),
        (SECOND, "ok", ""),
    ]
    log = wait_for_log(response.headers["x-request-id"])
    assert (log.model, log.status, log.cost_micros) == (SECOND, "ok", llmwise["cost_micros"])
    assert _statuses(log.route) == _statuses(llmwise["route"])
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - log.cost_micros, 0)
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_a_stream_that_started_is_never_failed_over(
    personas: Personas, faults: FaultControl, live_gateway: LiveGateway, sandbox: SandboxServer
) -> None:
    _fund(personas)
    secret = _key(personas)
    faults.set(provider="openai", fault="midstream_drop")
    before = sandbox.app.chat_calls
    with httpx.stream(
        "POST",
        live_gateway.url + URL,
        json=_chat(stream=True, fallbacks=[SECOND]),
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-llmwise-model"] == PRIMARY
        events = _sse(response)
    assert events[-1]["error"]["code"] == "upstream_stream_interrupted"
    assert sandbox.app.chat_calls == before + 1  # no second answer spliced onto the first
    log = wait_for_log(response.headers["x-request-id"])
    assert (log.model, log.status) == (PRIMARY, "error")
    assert log.cost_micros > 0  # billed for the text that was streamed
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_a_stream_with_every_provider_down_is_one_503(
    personas: Personas, live_gateway: LiveGateway
) -> None:
    wallet = _fund(personas)
    response = httpx.post(
        live_gateway.url + NATIVE_URL,
        json=_chat("hi [[sandbox:unavailable]]", stream=True, fallbacks=[SECOND]),
        headers={"authorization": f"Bearer {_key(personas)}"},
        timeout=10,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "all_providers_failed"
    log = wait_for_log(response.headers["x-request-id"])
    assert (log.http_status, log.cost_micros) == (503, 0)
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    _audit_ok()


def test_mesh_uses_the_organizations_default_chain(
    personas: Personas, faults: FaultControl, sandbox: SandboxServer, settings: Any
) -> None:
    from apps.gateway.services import org_default_chain_set

    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="chain")
    org_default_chain_set(org=personas.org, actor=None, model_ids=["gemini-2.5-flash"])
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    faults.set(provider="openai", fault="http_503")
    response = Client().post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "mesh": True, "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "gemini-2.5-flash"
