"""POST /api/v1/chat — the native endpoint — through HTTP, JSON and SSE, billed from the wallet.

JSON calls go through Django's test client in-process; streams through the live ASGI server so
the SSE bytes are real. Every provider call goes over real HTTP to the sandbox upstream.
"""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/api/v1/chat"
MODEL = "gpt-4o-mini"
FUNDS = 1_000_000


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


def _key(personas: Personas, **kwargs: Any) -> str:
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, **kwargs
    ).secret


def _fund(personas: Personas, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="test funds")
    wallet.refresh_from_db()
    return wallet


def _chat(content: str = "What is the capital of France?", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def _post(secret: str, body: Any) -> Any:
    data = body if isinstance(body, str) else json.dumps(body)
    return Client().post(
        URL, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a native SSE stream."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


# --- JSON ------------------------------------------------------------------------------------
def test_answer_carries_model_usage_cost_latency_and_route(personas: Personas) -> None:
    wallet = _fund(personas)
    response = _post(_key(personas), _chat(max_tokens=50, temperature=0.2, stop=["\n\n"]))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.result"
    assert body["id"] == response["x-request-id"]
    assert body["model"] == MODEL
    assert body["content"]
    assert body["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert (usage["cached_tokens"], usage["reasoning_tokens"], usage["estimated"]) == (0, 0, False)

    expected = cost_micros(
        model=CatalogModel.objects.get(pk=MODEL),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
    )
    assert body["cost"] == {
        "micros": expected,
        "usd": str((Decimal(expected) / 1_000_000).quantize(Decimal("0.000001"))),
        "charged": True,
    }
    assert body["latency_ms"] >= 0
    [attempt] = body["route"]["attempts"]
    assert attempt["latency_ms"] >= 0
    assert body["route"] == {
        "requested": MODEL,
        "chosen": MODEL,
        "reason": "requested",
        "category": "qa",
        "complexity": "low",
        "attempts": [
            {
                "model": MODEL,
                "provider": "openai",
                "status": "ok",
                "error_code": "",
                "latency_ms": attempt["latency_ms"],
            }
        ],
    }
    assert response["x-llmwise-model"] == MODEL
    assert response["x-llmwise-cost-micros"] == str(expected)
    assert int(response["x-llmwise-overhead-ms"]) >= 0

    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - expected, 0)
    log = RequestLog.objects.get(request_id=body["id"])
    assert (log.endpoint, log.status, log.cost_micros) == ("native.chat", "ok", expected)
    assert log.completion == body["content"]
    _audit_ok()


def test_alias_answers_with_the_model_used(personas: Personas) -> None:
    _fund(personas)
    response = _post(_key(personas), {**_chat(), "model": "claude-haiku-4-5"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "claude-haiku-4.5"
    assert body["route"]["requested"] == "claude-haiku-4-5"
    assert body["route"]["chosen"] == "claude-haiku-4.5"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ("{not json", 400, "invalid_request", None),
        ([1, 2], 400, "invalid_request", None),
        ({**_chat(), "max_token": 5}, 400, "unknown_parameter", "max_token"),
        ({**_chat(), "model": "auto", "fallbacks": [MODEL]}, 400, "invalid_request", "fallbacks"),
        ({**_chat(), "policy": ""}, 400, "invalid_request", "policy"),
        ({**_chat(), "policy": "no-such-policy"}, 404, "policy_not_found", "policy"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request", "model"),
        ({"model": MODEL, "messages": []}, 400, "invalid_request", "messages"),
        (
            {"model": MODEL, "messages": [{"role": "developer", "content": "x"}]},
            400,
            "invalid_request",
            "messages.0.role",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            400,
            "invalid_request",
            "messages.0.content",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x", "name": "bob"}]},
            400,
            "unknown_parameter",
            "messages.0.name",
        ),
        ({**_chat(), "stream": "yes"}, 400, "invalid_request", "stream"),
        ({**_chat(), "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
        ({**_chat(), "max_tokens": 10_000_000}, 400, "max_tokens_too_large", "max_tokens"),
        ({**_chat(), "temperature": 3}, 400, "invalid_request", "temperature"),
        ({**_chat(), "top_p": -1}, 400, "invalid_request", "top_p"),
        ({**_chat(), "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_request", "stop"),
        ({**_chat(), "model": "no-such-model"}, 404, "model_not_found", "model"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_charged(
    personas: Personas, sandbox: SandboxServer, body: Any, status: int, code: str, param: str
) -> None:
    wallet = _fund(personas)
    before = sandbox.app.chat_calls
    response = _post(_key(personas), body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert error["request_id"] == response["x-request-id"]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert not Reservation.objects.exists()
    assert sandbox.app.chat_calls == before


@pytest.mark.parametrize("header", ["", "Bearer lw-garbage", "Basic abc"])
def test_bad_keys_are_401(personas: Personas, header: str) -> None:
    response = Client().post(
        URL, _chat(), content_type="application/json", HTTP_AUTHORIZATION=header
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_get_is_405(personas: Personas) -> None:
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {_key(personas)}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_no_credit_is_402_and_nothing_goes_upstream(
    personas: Personas, sandbox: SandboxServer
) -> None:
    _fund(personas, 1)
    before = sandbox.app.chat_calls
    response = _post(_key(personas), _chat())
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "insufficient_credit"
    assert sandbox.app.chat_calls == before
    assert not Reservation.objects.exists()


@pytest.mark.parametrize(
    ("model", "marker", "status", "code"),
    [
        (MODEL, "http_429", 429, "upstream_rate_limited"),
        ("claude-haiku-4.5", "overloaded_529", 503, "upstream_overloaded"),
    ],
)
def test_upstream_errors_are_translated_and_the_hold_released(
    personas: Personas, model: str, marker: str, status: int, code: str
) -> None:
    wallet = _fund(personas)
    response = _post(_key(personas), {**_chat(f"hello [[sandbox:{marker}]]"), "model": model})
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["provider"] in {"openai", "anthropic"}
    if status == 429:
        assert int(response["Retry-After"]) >= 1
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    _audit_ok()


def test_other_tenant_key_bills_its_own_org_only(personas: Personas) -> None:
    ours = _fund(personas)
    theirs = wallet_services.wallet_for_org(org=personas.other_org)
    wallet_services.wallet_grant(wallet=theirs, amount_micros=FUNDS, note="t")
    their_key = account_services.api_key_create(
        org=personas.other_org, name="k", created_by=personas.outsider
    ).secret
    response = _post(their_key, _chat())
    assert response.status_code == 200
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.balance_micros == FUNDS
    assert theirs.balance_micros == FUNDS - response.json()["cost"]["micros"]
    assert RequestLog.objects.get().organization == personas.other_org


# --- SSE ---------------------------------------------------------------------------------------
@pytest.fixture
def live_secret(personas: Personas) -> str:
    _fund(personas)
    return _key(personas)


def _stream(live_gateway: LiveGateway, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        live_gateway.url + URL,
        headers={"Authorization": f"Bearer {secret}"},
        json={**body, "stream": True},
        timeout=10,
    )


@pytest.mark.django_db(transaction=True)
def test_stream_is_deltas_then_done_with_usage_cost_and_route(
    live_secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = _stream(live_gateway, live_secret, _chat("Stream a short answer.", max_tokens=40))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llmwise-model"] == MODEL
    events = _sse(response)
    names = [name for name, _ in events]
    assert names[-1] == "done"
    assert set(names[:-1]) == {"delta"}
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert text
    done = events[-1][1]
    assert done["id"] == response.headers["x-request-id"]
    assert (done["model"], done["finish_reason"]) == (MODEL, "stop")
    assert done["usage"]["completion_tokens"] > 0
    assert done["route"]["chosen"] == MODEL
    # The route is worked out once the first token is out; the final event has all of it.
    assert (done["route"]["category"], done["route"]["reason"]) == ("summarization", "requested")
    assert done["latency_ms"] >= 0
    log = wait_for_log(done["id"])
    assert (log.category, log.route["category"]) == ("summarization", "summarization")
    assert (log.endpoint, log.stream, log.completion) == ("native.chat", True, text)
    assert done["cost"]["micros"] == log.cost_micros > 0
    assert done["cost"]["charged"] is True
    assert Wallet.objects.get(organization=personas.org).balance_micros == FUNDS - log.cost_micros
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_stream_failing_before_text_is_a_json_error(
    live_secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = _stream(live_gateway, live_secret, _chat("hi [[sandbox:http_429]]"))
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert Wallet.objects.get(organization=personas.org).balance_micros == FUNDS
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_midstream_drop_ends_with_an_error_event_and_bills_what_was_streamed(
    live_secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    body = _chat("tell a story [[sandbox:midstream_drop]]", max_tokens=60)
    response = _stream(live_gateway, live_secret, body)
    assert response.status_code == 200
    events = _sse(response)
    assert events[0][0] == "delta"
    assert "done" not in [name for name, _ in events]
    name, error = events[-1]
    assert name == "error"
    assert error["error"]["provider"] == "openai"
    assert error["error"]["request_id"] == response.headers["x-request-id"]
    log = wait_for_log(response.headers["x-request-id"])
    assert (log.status, log.usage_estimated) == ("error", True)
    assert log.cost_micros > 0
    assert Wallet.objects.get(organization=personas.org).balance_micros == FUNDS - log.cost_micros
    _audit_ok()
